//! The HTTP/3 drivers end to end on loopback: a real server and client (quinn + h3), a fake
//! engine that answers calls and echoes events, and real UDP sockets standing in for the legacy
//! RTP peers on both sides.

use bytes::{Buf, Bytes, BytesMut};
use riptide::auth::{AuthError, Principal, TokenVerifier};
use riptide::config::{MediaConfig, TgConfig};
use riptide::media::{MediaCmd, MediaHub};
use riptide::metrics::Metrics;
use riptide::ript::client::{spawn_client, ClientCtx, PeerRuntime};
use riptide::ript::events::EventDecoder;
use riptide::ript::model::{
    CallDescription, CallDirection, CallRequest, CallState, Event, EventName, Proposal,
};
use riptide::ript::server::{spawn_server, CorsPolicy, ServerCtx};
use riptide::ript::{CallAccepted, Problem, RiptCmd, RiptEvent};
use riptide::CallKey;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Guard against a hang; never what decides a pass.
const HANG: Duration = Duration::from_secs(10);
const TG: &str = "trunk";
const PREFIX: &str = "/.well-known/ript/v1/providertgs";
/// The one browser origin the test server allows.
const ALLOWED: &str = "https://allowed.example";

struct TestVerifier;

impl TokenVerifier for TestVerifier {
    fn verify(&self, bearer: &str, _now: u64) -> Result<Principal, AuthError> {
        let all = ["calls:write", "tgs:read", "handlers:write"];
        let scopes: &[&str] = match bearer {
            "good" => &all,
            // A gateway that verified its calls and may say so (`verstat`).
            "gateway" => &["calls:write", "tgs:read", "handlers:write", "stir:verstat"],
            // Discovery only: calls and handlers get 403 insufficient_scope.
            "narrow" => &["tgs:read"],
            // Another client with every scope: it cannot touch "tester"'s handlers.
            "other" => {
                return Ok(Principal {
                    subject: "other".into(),
                    scopes: all.iter().map(|s| s.to_string()).collect(),
                })
            }
            _ => return Err(AuthError::Invalid("unknown token".into())),
        };
        Ok(Principal {
            subject: "tester".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        })
    }
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.datagram_receive_buffer_size(Some(1 << 20));
    t.datagram_send_buffer_size(1 << 20);
    Arc::new(t)
}

fn tls_configs() -> (quinn::ServerConfig, quinn::ClientConfig) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());

    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.into())
        .unwrap();
    server.alpn_protocols = vec![b"h3".to_vec()];
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server).unwrap(),
    ));
    sc.transport_config(transport());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h3".to_vec()];
    let mut cc = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client).unwrap(),
    ));
    cc.transport_config(transport());
    (sc, cc)
}

fn hub(metrics: Arc<Metrics>) -> MediaHub {
    let cfg = MediaConfig {
        ip: "127.0.0.1".parse().unwrap(),
        port_min: 0,
        port_max: 0,
        latching: true,
        ..MediaConfig::default()
    };
    // BindFailed is not expected in these tests; nothing reads the events.
    let (tx, rx) = mpsc::unbounded_channel();
    std::mem::forget(rx);
    MediaHub::new(&cfg, metrics, tx)
}

struct Harness {
    server_ep: quinn::Endpoint,
    server_addr: SocketAddr,
    server_cmd: mpsc::UnboundedSender<RiptCmd>,
    client_cmd: mpsc::UnboundedSender<RiptCmd>,
    server_hub: MediaHub,
    client_hub: MediaHub,
    client_metrics: Arc<Metrics>,
    /// Everything the server driver told its (fake) engine.
    server_seen: mpsc::UnboundedReceiver<RiptEvent>,
    /// Server-side keys of accepted calls, in order.
    accepted: mpsc::UnboundedReceiver<CallKey>,
    client_events: mpsc::Receiver<RiptEvent>,
    client_cfg: quinn::ClientConfig,
}

/// The server's engine stand-in: accepts every call except destination `reject`, turns on echo
/// media for destination `echo`, and sends every event it receives straight back.
async fn fake_engine(
    mut rx: mpsc::Receiver<RiptEvent>,
    cmd: mpsc::UnboundedSender<RiptCmd>,
    hub: MediaHub,
    seen: mpsc::UnboundedSender<RiptEvent>,
    accepted: mpsc::UnboundedSender<CallKey>,
) {
    let mut n = 0u64;
    while let Some(ev) = rx.recv().await {
        match &ev {
            RiptEvent::IncomingCall { req, request, .. } => {
                n += 1;
                let key = CallKey(100 + n);
                let result = if request.destination == "reject" {
                    Err(Problem::new(403, "Forbidden", "destination refused"))
                } else {
                    if request.destination == "echo" {
                        hub.apply(MediaCmd::Echo { call: key });
                    }
                    Ok(CallAccepted {
                        key,
                        id: format!("call{n}"),
                        description: CallDescription {
                            uri: String::new(),
                            handler: None,
                            direction: None,
                            destination: request.destination.clone(),
                            from: request.from.clone(),
                            state: CallState::Proceeding,
                            proposal: Proposal::default(),
                            media_ticket: None,
                        },
                    })
                };
                let ok = result.is_ok();
                cmd.send(RiptCmd::RespondCall { req: *req, result })
                    .unwrap();
                if ok {
                    accepted.send(key).unwrap();
                }
            }
            RiptEvent::ServerEvent { call, event } => {
                cmd.send(RiptCmd::ServerSend {
                    call: *call,
                    event: event.clone(),
                })
                .unwrap();
            }
            // Every take of an offered call is granted; the driver must refuse the ones that
            // are not the handler owner's, or come second.
            RiptEvent::TakeCall { req, handler, .. } => {
                let description = CallDescription {
                    uri: String::new(),
                    handler: handler.uri.clone(),
                    direction: Some(CallDirection::Inbound),
                    destination: "page".into(),
                    from: Some("+12155551212".into()),
                    state: CallState::Proceeding,
                    proposal: Proposal::default(),
                    media_ticket: None,
                };
                cmd.send(RiptCmd::RespondTake {
                    req: *req,
                    result: Ok(description),
                })
                .unwrap();
            }
            _ => {}
        }
        let _ = seen.send(ev);
    }
}

async fn harness() -> Harness {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (sc, cc) = tls_configs();
    let server_ep = quinn::Endpoint::server(sc, "127.0.0.1:0".parse().unwrap()).unwrap();
    let server_addr = server_ep.local_addr().unwrap();

    let server_hub = hub(Arc::new(Metrics::default()));
    let (engine_tx, engine_rx) = mpsc::channel(256);
    let server = spawn_server(
        server_ep.clone(),
        ServerCtx {
            tgs: vec![TgConfig {
                name: TG.into(),
                description: "test trunk".into(),
                destinations: "*".into(),
                routes: vec![],
            }],
            authority: format!("localhost:{}", server_addr.port()),
            verifier: Arc::new(TestVerifier),
            media: server_hub.clone(),
            metrics: Arc::new(Metrics::default()),
            events: engine_tx,
            cors: CorsPolicy {
                origins: vec![ALLOWED.into()],
                max_age_secs: 600,
            },
            jwks: Some(Arc::new(
                || serde_json::json!({"keys": [{"kty": "EC", "kid": "test"}]}),
            )),
        },
    );
    let server_cmd = server.cmd_sender();
    let (seen_tx, server_seen) = mpsc::unbounded_channel();
    let (acc_tx, accepted) = mpsc::unbounded_channel();
    tokio::spawn(fake_engine(
        engine_rx,
        server_cmd.clone(),
        server_hub.clone(),
        seen_tx,
        acc_tx,
    ));

    let client_metrics = Arc::new(Metrics::default());
    let client_hub = hub(client_metrics.clone());
    let client_ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let (client_tx, client_events) = mpsc::channel(256);
    let client = spawn_client(
        client_ep,
        ClientCtx {
            peers: vec![PeerRuntime {
                name: "b".into(),
                addr: server_addr,
                server_name: "localhost".into(),
                tg: TG.into(),
                token: "good".into(),
                client_config: cc.clone(),
            }],
            media: client_hub.clone(),
            metrics: client_metrics.clone(),
            events: client_tx,
        },
    );
    Harness {
        server_ep,
        server_addr,
        server_cmd,
        client_cmd: client.cmd_sender(),
        server_hub,
        client_hub,
        client_metrics,
        server_seen,
        accepted,
        client_events,
        client_cfg: cc,
    }
}

/// Waits for the first item `f` maps to `Some`, skipping the rest.
async fn next<E, T>(rx: &mut mpsc::Receiver<E>, mut f: impl FnMut(E) -> Option<T>) -> T {
    tokio::time::timeout(HANG, async {
        loop {
            let e = rx.recv().await.expect("channel closed");
            if let Some(t) = f(e) {
                return t;
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}

async fn next_u<E, T>(rx: &mut mpsc::UnboundedReceiver<E>, mut f: impl FnMut(E) -> Option<T>) -> T {
    tokio::time::timeout(HANG, async {
        loop {
            let e = rx.recv().await.expect("channel closed");
            if let Some(t) = f(e) {
                return t;
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}

impl Harness {
    fn create(&self, call: u64, destination: &str) {
        self.client_cmd
            .send(RiptCmd::CreateCall {
                call: CallKey(call),
                peer: 0,
                request: CallRequest {
                    destination: destination.into(),
                    ..CallRequest::default()
                },
            })
            .unwrap();
    }

    /// Creates a call and returns (client description, server-side key).
    async fn created(&mut self, call: u64, destination: &str) -> (CallDescription, CallKey) {
        self.create(call, destination);
        let d = next(&mut self.client_events, |e| match e {
            RiptEvent::CallCreated {
                call: c,
                description,
            } if c == CallKey(call) => Some(description),
            RiptEvent::CreateFailed { reason, .. } => panic!("create failed: {reason}"),
            _ => None,
        })
        .await;
        let key = next_u(&mut self.accepted, Some).await;
        (d, key)
    }

    /// A fresh HTTP/3 client connection: its endpoint (keep it alive) and request sender.
    async fn h3_client(
        &self,
    ) -> (
        quinn::Endpoint,
        h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    ) {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = ep
            .connect_with(self.client_cfg.clone(), self.server_addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut driver, send) = h3::client::builder()
            .build::<_, _, Bytes>(h3_quinn::Connection::new(conn))
            .await
            .unwrap();
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        (ep, send)
    }

    /// One raw HTTP/3 request on a fresh connection: (status, headers, body).
    async fn raw(
        &self,
        method: http::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (http::StatusCode, http::HeaderMap, Bytes) {
        let (_ep, mut send) = self.h3_client().await;
        let mut req = http::Request::builder().method(method).uri(format!(
            "https://localhost:{}{path}",
            self.server_addr.port()
        ));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let mut s = send.send_request(req.body(()).unwrap()).await.unwrap();
        if let Some(b) = body {
            s.send_data(Bytes::from(b.to_owned())).await.unwrap();
        }
        s.finish().await.unwrap();
        let resp = s.recv_response().await.unwrap();
        let mut out = BytesMut::new();
        while let Some(mut chunk) = s.recv_data().await.unwrap() {
            out.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        (resp.status(), resp.headers().clone(), out.freeze())
    }
}

/// One request as a browser (or a test) shapes it: extra headers, optional `:protocol`.
struct Raw<'a> {
    method: http::Method,
    path: &'a str,
    token: Option<&'a str>,
    headers: &'a [(&'a str, &'a str)],
    protocol: Option<h3::ext::Protocol>,
    body: Option<&'a str>,
}

impl Raw<'_> {
    fn new(method: http::Method, path: &str) -> Raw<'_> {
        Raw {
            method,
            path,
            token: None,
            headers: &[],
            protocol: None,
            body: None,
        }
    }
}

impl Harness {
    /// Sends `r` on a fresh connection: (status, headers, body). For CONNECT only the head is
    /// read (an accepted media stream stays open).
    async fn send(&self, r: Raw<'_>) -> (http::StatusCode, http::HeaderMap, Bytes) {
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = ep
            .connect_with(self.client_cfg.clone(), self.server_addr, "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut driver, mut send) = h3::client::builder()
            .enable_extended_connect(true)
            .build::<_, _, Bytes>(h3_quinn::Connection::new(conn))
            .await
            .unwrap();
        tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
        let mut req = http::Request::builder()
            .method(r.method.clone())
            .uri(format!(
                "https://localhost:{}{}",
                self.server_addr.port(),
                r.path
            ));
        if let Some(t) = r.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        for (n, v) in r.headers {
            req = req.header(*n, *v);
        }
        let mut req = req.body(()).unwrap();
        if let Some(p) = r.protocol {
            req.extensions_mut().insert(p);
        }
        let mut s = send.send_request(req).await.unwrap();
        if let Some(b) = r.body {
            s.send_data(Bytes::from(b.to_owned())).await.unwrap();
        }
        if r.method != http::Method::CONNECT {
            s.finish().await.unwrap();
        }
        let resp = tokio::time::timeout(HANG, s.recv_response())
            .await
            .expect("no response")
            .unwrap();
        let mut out = BytesMut::new();
        if r.method != http::Method::CONNECT {
            while let Some(mut chunk) = s.recv_data().await.unwrap() {
                out.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
            }
        }
        (resp.status(), resp.headers().clone(), out.freeze())
    }
}

fn hv<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.to_str().unwrap())
}

/// The comma-separated tokens of `name`, lower-cased.
fn tokens(h: &http::HeaderMap, name: &str) -> Vec<String> {
    hv(h, name)
        .unwrap_or("")
        .split(',')
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// CORS-01: a preflight from the allowed origin, without any token, gets 204 and every header
/// the browser's check needs, with `authorization` named (never `*`).
#[tokio::test]
async fn cors_preflight_from_the_allowed_origin_gets_204_without_a_token() {
    let h = harness().await;
    let calls = format!("{PREFIX}/{TG}/calls");
    let call = format!("{calls}/x");
    let events = format!("{call}/events");
    for (path, method, methods) in [
        (calls.as_str(), "POST", "post"),
        (PREFIX, "GET", "get"),
        (call.as_str(), "GET", "get, post"),
        (events.as_str(), "PUT", "get, put"),
    ] {
        let (status, hd, body) = h
            .send(Raw {
                headers: &[
                    ("origin", ALLOWED),
                    ("access-control-request-method", method),
                    (
                        "access-control-request-headers",
                        "authorization,content-type",
                    ),
                ],
                ..Raw::new(http::Method::OPTIONS, path)
            })
            .await;
        assert_eq!(status, 204, "{path}");
        assert!(body.is_empty());
        assert_eq!(hv(&hd, "access-control-allow-origin"), Some(ALLOWED));
        assert_eq!(tokens(&hd, "vary"), vec!["origin"]);
        assert_eq!(
            tokens(&hd, "access-control-allow-methods").join(", "),
            methods,
            "{path}"
        );
        let allow_headers = tokens(&hd, "access-control-allow-headers");
        assert!(allow_headers.contains(&"authorization".to_string()));
        assert!(allow_headers.contains(&"content-type".to_string()));
        assert!(!allow_headers.contains(&"*".to_string()));
        assert_eq!(hv(&hd, "access-control-max-age"), Some("600"));
        assert!(tokens(&hd, "access-control-expose-headers").contains(&"location".to_string()));
        assert!(!hd.contains_key("access-control-allow-credentials"));
        assert!(
            !hd.contains_key("www-authenticate"),
            "no token was asked for"
        );
    }
}

/// CORS-02: any other origin, look-alikes and `null` included, gets 403 and no ACAO.
#[tokio::test]
async fn cors_preflight_from_other_origins_is_403_without_acao() {
    let h = harness().await;
    let calls = format!("{PREFIX}/{TG}/calls");
    let refused: &[&[(&str, &str)]] = &[
        &[("origin", "https://evil.example")],
        &[("origin", "null")],
        &[("origin", "https://allowed.example.evil.com")],
        &[("origin", "https://evil-allowed.example")],
        &[("origin", "https://allowed.examplex")],
        &[("origin", "http://allowed.example")],
        &[("origin", "https://allowed.example:8443")],
        &[("origin", "https://allowed.example:443")],
        &[("origin", "HTTPS://ALLOWED.EXAMPLE")],
        &[("origin", "https://allowed.example/")],
        &[("origin", ALLOWED), ("origin", ALLOWED)],
    ];
    for origin in refused {
        let mut headers = origin.to_vec();
        headers.push(("access-control-request-method", "POST"));
        headers.push((
            "access-control-request-headers",
            "authorization,content-type",
        ));
        let (status, hd, body) = h
            .send(Raw {
                headers: &headers,
                ..Raw::new(http::Method::OPTIONS, &calls)
            })
            .await;
        assert_eq!(status, 403, "{origin:?}");
        assert!(
            !hd.contains_key("access-control-allow-origin"),
            "{origin:?}"
        );
        assert!(
            !hd.contains_key("access-control-allow-methods"),
            "{origin:?}"
        );
        assert!(!hd.contains_key("access-control-allow-credentials"));
        assert_eq!(tokens(&hd, "vary"), vec!["origin"]);
        let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(p["status"], 403);
    }
    // An allowed origin asking about an unknown resource gets no 2xx.
    let (status, _, _) = h
        .send(Raw {
            headers: &[
                ("origin", ALLOWED),
                ("access-control-request-method", "GET"),
            ],
            ..Raw::new(http::Method::OPTIONS, "/elsewhere")
        })
        .await;
    assert_eq!(status, 404);
    // OPTIONS without Access-Control-Request-Method is not a preflight: the token is needed.
    let (status, hd, _) = h
        .send(Raw {
            headers: &[("origin", ALLOWED)],
            ..Raw::new(http::Method::OPTIONS, &calls)
        })
        .await;
    assert_eq!(status, 401);
    assert_eq!(hv(&hd, "access-control-allow-origin"), Some(ALLOWED));
}

/// Actual requests: the allowed origin gets ACAO (errors too, so the page can read them);
/// another origin's request still runs, authenticated as usual, but carries no ACAO.
#[tokio::test]
async fn cors_actual_requests_carry_acao_only_for_the_allowed_origin() {
    let h = harness().await;
    let list = |origin: Option<&'static str>, token: Option<&'static str>| {
        let headers: &'static [(&'static str, &'static str)] = match origin {
            Some(ALLOWED) => &[("origin", ALLOWED)],
            Some(_) => &[("origin", "https://allowed.example.evil.com")],
            None => &[],
        };
        Raw {
            token,
            headers,
            ..Raw::new(http::Method::GET, PREFIX)
        }
    };
    let (status, hd, _) = h.send(list(Some(ALLOWED), Some("good"))).await;
    assert_eq!(status, 200);
    assert_eq!(hv(&hd, "access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(tokens(&hd, "vary"), vec!["origin"]);
    assert!(!hd.contains_key("access-control-allow-credentials"));

    let (status, hd, _) = h.send(list(Some("evil"), Some("good"))).await;
    assert_eq!(
        status, 200,
        "CORS is the browser's to enforce; the API still answers"
    );
    assert!(!hd.contains_key("access-control-allow-origin"));
    assert_eq!(tokens(&hd, "vary"), vec!["origin"]);

    let (status, hd, _) = h.send(list(None, Some("good"))).await;
    assert_eq!(status, 200);
    assert!(!hd.contains_key("access-control-allow-origin"));

    let (status, hd, _) = h.send(list(Some(ALLOWED), None)).await;
    assert_eq!(status, 401, "the allowed origin does not replace the token");
    assert_eq!(hv(&hd, "access-control-allow-origin"), Some(ALLOWED));
    assert!(tokens(&hd, "access-control-expose-headers").contains(&"www-authenticate".into()));
    let (status, hd, _) = h.send(list(Some("evil"), None)).await;
    assert_eq!(status, 401);
    assert!(!hd.contains_key("access-control-allow-origin"));

    // A created resource's Location is readable by the page.
    let handler = r#"{"handler-id":"h1","advertisement":{"codecs":[{"mediaType":"audio/PCMU","clockRate":8000}]}}"#;
    let path = format!("{PREFIX}/{TG}/handlers");
    let (status, hd, _) = h
        .send(Raw {
            token: Some("good"),
            headers: &[("origin", ALLOWED), ("content-type", "application/json")],
            body: Some(handler),
            ..Raw::new(http::Method::POST, &path)
        })
        .await;
    assert_eq!(status, 201);
    assert!(hd.contains_key("location"));
    assert_eq!(hv(&hd, "access-control-allow-origin"), Some(ALLOWED));
    assert!(tokens(&hd, "access-control-expose-headers").contains(&"location".into()));
}

/// An extended CONNECT with `:protocol webtransport` to `path`.
fn wt<'a>(path: &'a str, token: Option<&'a str>, headers: &'a [(&'a str, &'a str)]) -> Raw<'a> {
    Raw {
        token,
        headers,
        protocol: Some(h3::ext::Protocol::WEB_TRANSPORT),
        ..Raw::new(http::Method::CONNECT, path)
    }
}

/// WT-01: extended CONNECT checks Origin before anything else; without Origin (a gateway, not
/// a browser) only a valid token opens the session; WebTransport elsewhere is 405.
#[tokio::test]
async fn webtransport_connect_checks_origin_and_token() {
    let mut h = harness().await;
    let (desc, _key) = h.created(51, "200").await;
    let media = format!("{}/media", path_of(&desc.uri));
    for origin in [
        "https://evil.example",
        "null",
        "https://allowed.example.evil.com",
        "https://evil-allowed.example",
    ] {
        let headers = [("origin", origin)];
        let (status, hd, _) = h.send(wt(&media, Some("good"), &headers)).await;
        assert_eq!(status, 403, "{origin}");
        assert!(!hd.contains_key("access-control-allow-origin"));
        let (status, _, _) = h.send(wt(&media, None, &headers)).await;
        assert_eq!(status, 403, "{origin}, no token");
    }
    let (status, _, _) = h.send(wt(&media, None, &[])).await;
    assert_eq!(status, 401, "no Origin and no token");
    let (status, _, _) = h.send(wt(&media, Some("wrong"), &[])).await;
    assert_eq!(status, 401, "no Origin and a bad token");
    let (status, _, _) = h.send(wt(&media, None, &[("origin", ALLOWED)])).await;
    assert_eq!(status, 401, "an allowed Origin still needs the token");
    let (status, hd, _) = h.send(wt(&media, Some("good"), &[])).await;
    assert_eq!(status, 200, "a non-browser client with a valid token");
    assert!(!hd.contains_key("access-control-allow-origin"));
    let (status, hd, _) = h
        .send(wt(&media, Some("good"), &[("origin", ALLOWED)]))
        .await;
    assert_eq!(status, 200);
    assert_eq!(hv(&hd, "access-control-allow-origin"), Some(ALLOWED));

    let call = path_of(&desc.uri);
    let events = format!("{call}/events");
    for path in [PREFIX, call.as_str(), events.as_str(), "/elsewhere"] {
        let (status, hd, _) = h
            .send(Raw {
                token: Some("good"),
                protocol: Some(h3::ext::Protocol::WEB_TRANSPORT),
                ..Raw::new(http::Method::CONNECT, path)
            })
            .await;
        assert_eq!(status, 405, "{path}");
        assert!(hd.contains_key("allow"), "{path}");
    }
}

fn path_of(uri: &str) -> String {
    uri.parse::<http::Uri>().unwrap().path().to_owned()
}

fn event(name: EventName) -> Event {
    Event::new(name)
}

#[tokio::test]
async fn call_is_created_and_events_flow_both_ways() {
    let mut h = harness().await;
    let (desc, key) = h.created(1, "+12155551213").await;
    assert_eq!(desc.destination, "+12155551213");
    assert!(
        desc.uri.ends_with(&format!("{PREFIX}/{TG}/calls/call1")),
        "{}",
        desc.uri
    );

    // Server → client: sent before or after the GET opens, it arrives either way (the last
    // state event starts a new GET).
    h.server_cmd
        .send(RiptCmd::ServerSend {
            call: key,
            event: event(EventName::Alerting),
        })
        .unwrap();
    next(&mut h.client_events, |e| match e {
        RiptEvent::ClientEvent {
            call: CallKey(1),
            event,
        } => (event.name == EventName::Alerting).then_some(()),
        _ => None,
    })
    .await;

    // Client → server (PUT), echoed back by the fake engine (GET).
    let mut ping = event(EventName::Ping);
    ping.nonce = Some("n1".into());
    h.client_cmd
        .send(RiptCmd::ClientSend {
            call: CallKey(1),
            event: ping.clone(),
        })
        .unwrap();
    let got = next_u(&mut h.server_seen, |e| match e {
        RiptEvent::ServerEvent { call, event } if call == key => Some(event),
        _ => None,
    })
    .await;
    assert_eq!(got, ping);
    let back = next(&mut h.client_events, |e| match e {
        RiptEvent::ClientEvent { call, event } if event.name == EventName::Ping => {
            Some((call, event))
        }
        _ => None,
    })
    .await;
    assert_eq!(back, (CallKey(1), ping));

    // GET {call} reflects the state the engine announced.
    let (status, _, body) = h
        .raw(http::Method::GET, &path_of(&desc.uri), Some("good"), None)
        .await;
    assert_eq!(status, 200);
    let d: CallDescription = serde_json::from_slice(&body).unwrap();
    assert_eq!(d.state, CallState::Alerting);
}

#[tokio::test]
async fn refused_call_reports_status_and_reason() {
    let mut h = harness().await;
    h.create(7, "reject");
    let (status, reason) = next(&mut h.client_events, |e| match e {
        RiptEvent::CreateFailed {
            call: CallKey(7),
            status,
            reason,
        } => Some((status, reason)),
        _ => None,
    })
    .await;
    assert_eq!(status, 403);
    assert!(reason.contains("Forbidden"), "{reason}");
}

#[tokio::test]
async fn auth_and_unknown_resources() {
    let h = harness().await;
    let calls = format!("{PREFIX}/{TG}/calls");

    let (status, headers, body) = h.raw(http::Method::POST, &calls, None, Some("{}")).await;
    assert_eq!(status, 401);
    assert!(headers
        .get("www-authenticate")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/problem+json"
    );
    let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(p["status"], 401);

    // OAUTH-01: no token is a bare challenge (no `error`); a token in the query string
    // (RFC 6750 §2.3, which we do not support) counts for nothing.
    for path in [PREFIX.to_string(), format!("{PREFIX}?access_token=good")] {
        let (status, headers, _) = h.raw(http::Method::GET, &path, None, None).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(
            hv(&headers, "www-authenticate"),
            Some(r#"Bearer realm="riptide""#),
            "{path}"
        );
    }

    let (status, headers, _) = h.raw(http::Method::GET, PREFIX, Some("wrong"), None).await;
    assert_eq!(status, 401);
    assert!(headers.contains_key("www-authenticate"));

    let (status, _, body) = h.raw(http::Method::GET, PREFIX, Some("good"), None).await;
    assert_eq!(status, 200);
    let list: riptide::ript::model::TgList = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.tgs.len(), 1);
    assert_eq!(list.tgs[0].name, TG);

    let (status, _, _) = h
        .raw(
            http::Method::GET,
            &format!("{calls}/nope"),
            Some("good"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _, _) = h
        .raw(
            http::Method::GET,
            &format!("{calls}/nope/events"),
            Some("good"),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _, _) = h
        .raw(
            http::Method::POST,
            &format!("{PREFIX}/other/calls"),
            Some("good"),
            Some(r#"{"destination":"1"}"#),
        )
        .await;
    assert_eq!(status, 404);
    let (status, headers, _) = h
        .raw(http::Method::POST, &calls, Some("good"), Some("{not json"))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/problem+json"
    );

    let handler = r#"{"handler-id":"h1","advertisement":{"codecs":[{"mediaType":"audio/PCMU","clockRate":8000}]}}"#;
    let (status, headers, body) = h
        .raw(
            http::Method::POST,
            &format!("{PREFIX}/{TG}/handlers"),
            Some("good"),
            Some(handler),
        )
        .await;
    assert_eq!(status, 201);
    let loc = headers
        .get("location")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        loc.ends_with(&format!("{PREFIX}/{TG}/handlers/h1")),
        "{loc}"
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["uri"], loc);
}

#[tokio::test]
async fn ended_call_is_gone() {
    let mut h = harness().await;
    let (desc, key) = h.created(2, "100").await;
    let call_path = path_of(&desc.uri);
    // The client's events GET is open once the server reports it.
    next_u(&mut h.server_seen, |e| match e {
        RiptEvent::ServerEventsOpened { call } if call == key => Some(()),
        _ => None,
    })
    .await;

    let (status, headers, _) = h
        .raw(http::Method::DELETE, &call_path, Some("good"), None)
        .await;
    assert_eq!(status, 405);
    assert_eq!(headers.get("allow").unwrap(), "GET, POST");

    let mut declined = Event::new(EventName::Declined);
    declined.code = Some(486);
    h.server_cmd
        .send(RiptCmd::ServerSend {
            call: key,
            event: declined,
        })
        .unwrap();
    h.server_cmd.send(RiptCmd::ServerEnd { call: key }).unwrap();
    // The GET closed with `]` before the engine closed the call on the client: a loss.
    next(&mut h.client_events, |e| match e {
        RiptEvent::ClientEventsLost { call: CallKey(2) } => Some(()),
        _ => None,
    })
    .await;
    let (status, _, _) = h
        .raw(http::Method::GET, &call_path, Some("good"), None)
        .await;
    assert_eq!(status, 404);
    // A client whose events GET comes after the end (a callee that refused at once) still
    // learns how the call ended: the final event, then the array closes.
    let (status, _, body) = h
        .raw(
            http::Method::GET,
            &format!("{call_path}/events"),
            Some("good"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let mut dec = riptide::ript::events::EventDecoder::new();
    dec.push(&body);
    let ev = dec.next_event().expect("the final event").expect("parses");
    assert_eq!(ev.name, EventName::Declined);
    assert_eq!(ev.code, Some(486));
    assert!(dec.next_event().is_none());
    assert!(dec.finished(), "the array is closed");
    // Anything else on the ended call is 404.
    let (status, _, _) = h
        .raw(
            http::Method::PUT,
            &format!("{call_path}/events"),
            Some("good"),
            Some("["),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn calls_share_one_connection() {
    let mut h = harness().await;
    h.create(11, "a");
    h.create(12, "b");
    let mut created = Vec::new();
    while created.len() < 2 {
        let c = next(&mut h.client_events, |e| match e {
            RiptEvent::CallCreated { call, .. } => Some(call),
            RiptEvent::CreateFailed { reason, .. } => panic!("create failed: {reason}"),
            _ => None,
        })
        .await;
        created.push(c);
    }
    created.sort();
    assert_eq!(created, vec![CallKey(11), CallKey(12)]);
    assert_eq!(h.server_ep.open_connections(), 1);
}

fn rtp_packet(seq: u16, marker: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[marker; 160]);
    p
}

/// Opens a call's legacy leg on `hub` toward `remote` and returns the leg's own address.
fn open_leg(
    hub: &MediaHub,
    call: CallKey,
    remote: SocketAddr,
    rtcp_mux: bool,
    latching: bool,
) -> SocketAddr {
    hub.apply(MediaCmd::OpenLegacy { call, port: 0 });
    hub.apply(MediaCmd::SetRemote {
        call,
        rtp: remote,
        rtcp: None,
        rtcp_mux,
        latching,
    });
    hub.legacy_addr(call).expect("the leg is bound")
}

/// Sends `pkt` from `from` to `to` until `sink` receives it. The media bindings are set up by
/// stream tasks with no completion signal, and UDP/datagrams may be dropped meanwhile, so
/// the packet is retried; each attempt waits for the packet itself.
async fn relay_until_received(from: &UdpSocket, to: SocketAddr, sink: &UdpSocket, pkt: &[u8]) {
    let mut buf = [0u8; 2048];
    for _ in 0..100 {
        from.send_to(pkt, to).await.unwrap();
        if let Ok(r) =
            tokio::time::timeout(Duration::from_millis(100), sink.recv_from(&mut buf)).await
        {
            let (n, _) = r.unwrap();
            if &buf[..n] == pkt {
                return;
            }
        }
    }
    panic!("packet never relayed");
}

#[tokio::test]
async fn media_relays_both_ways_per_call() {
    let mut h = harness().await;
    let sip_a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sip_b = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // Client gateway's legacy leg for call 21.
    let a_side = open_leg(
        &h.client_hub,
        CallKey(21),
        sip_a.local_addr().unwrap(),
        true,
        false,
    );

    // A second call on the same connection must not receive call 21's media.
    let (_, other) = h.created(22, "other").await;
    let sip_c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    open_leg(
        &h.server_hub,
        other,
        sip_c.local_addr().unwrap(),
        true,
        false,
    );

    let (_, key) = h.created(21, "media").await;
    // The SDP address is wrong (as behind a NAT); latching must find sip_b from its packets.
    let b_side = open_leg(
        &h.server_hub,
        key,
        "127.0.0.1:9".parse().unwrap(),
        false,
        true,
    );

    relay_until_received(&sip_b, b_side, &sip_a, &rtp_packet(2, 0xb2)).await;
    relay_until_received(&sip_a, a_side, &sip_b, &rtp_packet(1, 0xa1)).await;
    assert!(h.client_metrics.rtp_sip_to_quic.load(Ordering::Relaxed) >= 1);
    assert!(h.client_metrics.rtp_quic_to_sip.load(Ordering::Relaxed) >= 1);

    // Nothing of call 21 reached call 22's legacy peer.
    let mut buf = [0u8; 2048];
    assert!(sip_c.try_recv_from(&mut buf).is_err());
}

#[tokio::test]
async fn echo_reflects_datagrams() {
    let mut h = harness().await;
    let sip_a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a_side = open_leg(
        &h.client_hub,
        CallKey(31),
        sip_a.local_addr().unwrap(),
        true,
        true,
    );
    h.created(31, "echo").await;
    relay_until_received(&sip_a, a_side, &sip_a, &rtp_packet(9, 0xee)).await;
}

#[tokio::test]
async fn reopened_events_start_from_the_last_state() {
    let mut h = harness().await;
    let (_, key) = h.created(41, "200").await;
    h.server_cmd
        .send(RiptCmd::ServerSend {
            call: key,
            event: event(EventName::Answered),
        })
        .unwrap();
    let answered = |e| match e {
        RiptEvent::ClientEvent { call, event }
            if call == CallKey(41) && event.name == EventName::Answered =>
        {
            Some(())
        }
        _ => None,
    };
    next(&mut h.client_events, answered).await;
    h.client_cmd
        .send(RiptCmd::ClientReopenEvents { call: CallKey(41) })
        .unwrap();
    // The new GET replays the current state first.
    next(&mut h.client_events, answered).await;
    // The PUT still works after the reopen.
    h.client_cmd
        .send(RiptCmd::ClientSend {
            call: CallKey(41),
            event: event(EventName::Hold),
        })
        .unwrap();
    next_u(&mut h.server_seen, |e| match e {
        RiptEvent::ServerEvent { call, event } if call == key && event.name == EventName::Hold => {
            Some(())
        }
        _ => None,
    })
    .await;
}

#[tokio::test]
async fn rtp_before_the_media_binding_is_held_and_relayed_when_it_comes() {
    let mut h = harness().await;
    let sip_a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a_side = open_leg(
        &h.client_hub,
        CallKey(41),
        sip_a.local_addr().unwrap(),
        true,
        true,
    );
    // The callee talks at once: its first packet reaches the gateway before the call's QUIC
    // media stream exists.
    let first = rtp_packet(1, 0x41);
    sip_a.send_to(&first, a_side).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.created(41, "echo").await;
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sip_a.recv_from(&mut buf))
        .await
        .expect("the early packet comes back through the echo")
        .unwrap();
    assert_eq!(&buf[..n], &first[..]);
}

/// OAUTH-03: a good token without the resource's scope gets 403 `insufficient_scope` naming the
/// scope; OAUTH-06: the key set and the issuer metadata are public.
#[tokio::test]
async fn scopes_per_resource_and_public_keys() {
    let h = harness().await;
    let calls = format!("{PREFIX}/{TG}/calls");
    let (status, headers, body) = h
        .raw(http::Method::POST, &calls, Some("narrow"), Some("{}"))
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        hv(&headers, "www-authenticate"),
        Some(r#"Bearer realm="riptide", error="insufficient_scope", scope="calls:write""#)
    );
    let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(p["status"], 403);
    let handlers = format!("{PREFIX}/{TG}/handlers");
    let (status, headers, _) = h
        .raw(http::Method::POST, &handlers, Some("narrow"), Some("{}"))
        .await;
    assert_eq!(status, 403);
    assert!(hv(&headers, "www-authenticate")
        .unwrap()
        .contains(r#"scope="handlers:write""#));
    let (status, _, _) = h.raw(http::Method::GET, PREFIX, Some("narrow"), None).await;
    assert_eq!(status, 200, "discovery needs tgs:read only");

    let (status, headers, body) = h
        .raw(
            http::Method::GET,
            riptide::ript::server::JWKS_PATH,
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "no token needed");
    assert_eq!(hv(&headers, "content-type"), Some("application/json"));
    let jwks: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], "test");
    let (status, _, body) = h
        .raw(
            http::Method::GET,
            riptide::ript::server::AS_METADATA_PATH,
            None,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let meta: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(meta["jwks_uri"]
        .as_str()
        .unwrap()
        .ends_with("/.well-known/jwks.json"));
}

/// `verstat` in `POST {TG}/calls` reaches the engine only from a client whose token has the
/// `stir:verstat` scope; from any other client it is dropped.
#[tokio::test]
async fn verstat_is_kept_only_from_clients_trusted_to_assert_it() {
    let mut h = harness().await;
    let path = format!("{PREFIX}/{TG}/calls");
    let body = r#"{"destination":"+12155551213","from":"+12155551212","verstat":"TN-Validation-Passed","advertisement":{"codecs":[{"mediaType":"audio/PCMU","clockRate":8000}]}}"#;
    for (token, want) in [("good", None), ("gateway", Some("TN-Validation-Passed"))] {
        let (status, _, reply) = h
            .raw(http::Method::POST, &path, Some(token), Some(body))
            .await;
        assert_eq!(status, 201, "{token}: {}", String::from_utf8_lossy(&reply));
        let seen = next_u(&mut h.server_seen, |e| match e {
            RiptEvent::IncomingCall { request, .. } => Some(request.verstat),
            _ => None,
        })
        .await;
        assert_eq!(seen.as_deref(), want, "{token}");
    }
}

/// A browser page cannot put a token on its WebTransport CONNECT: the `201` to its
/// `POST {TG}/calls` carries a media ticket that opens that call's media once, from that
/// origin. Gateways (no Origin) get none.
#[tokio::test]
async fn browser_calls_get_a_single_use_media_ticket() {
    let h = harness().await;
    let calls = format!("{PREFIX}/{TG}/calls");
    let body = r#"{"destination":"echo","advertisement":{"codecs":[{"mediaType":"audio/PCMU","clockRate":8000}]}}"#;
    let post = |origin: Option<&'static str>| {
        let headers: &'static [(&'static str, &'static str)] = match origin {
            Some(_) => &[("origin", ALLOWED)],
            None => &[],
        };
        Raw {
            token: Some("good"),
            headers,
            body: Some(body),
            ..Raw::new(http::Method::POST, &calls)
        }
    };
    let (status, _, reply) = h.send(post(None)).await;
    assert_eq!(status, 201);
    let d: CallDescription = serde_json::from_slice(&reply).unwrap();
    assert_eq!(d.media_ticket, None, "no ticket without Origin");

    let (status, _, reply) = h.send(post(Some(ALLOWED))).await;
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&reply));
    let d: CallDescription = serde_json::from_slice(&reply).unwrap();
    let ticket = d
        .media_ticket
        .clone()
        .expect("a media ticket for a browser call");
    assert!(ticket.len() >= 32, "{ticket}");
    // GET {call} does not reveal it.
    let (_, _, got) = h
        .raw(http::Method::GET, &path_of(&d.uri), Some("good"), None)
        .await;
    assert!(!String::from_utf8_lossy(&got).contains(&ticket));

    let media = format!("{}/media?ticket={ticket}", path_of(&d.uri));
    let origin = [("origin", ALLOWED)];
    // Without the page's Origin, or for another call, it opens nothing (and stays unused).
    let (status, _, _) = h.send(wt(&media, None, &[])).await;
    assert_eq!(status, 401, "ticket without the origin it was issued to");
    let (_, _, other) = h.send(post(None)).await;
    let other: CallDescription = serde_json::from_slice(&other).unwrap();
    let elsewhere = format!("{}/media?ticket={ticket}", path_of(&other.uri));
    let (status, _, _) = h.send(wt(&elsewhere, None, &origin)).await;
    assert_eq!(status, 401, "ticket for another call");
    // A disallowed origin is refused before the ticket is looked at.
    let (status, _, _) = h
        .send(wt(&media, None, &[("origin", "https://evil.example")]))
        .await;
    assert_eq!(status, 403);
    // The page: accepted without a token, once.
    let (status, hd, _) = h.send(wt(&media, None, &origin)).await;
    assert_eq!(status, 200);
    assert_eq!(hv(&hd, "access-control-allow-origin"), Some(ALLOWED));
    let (status, _, _) = h.send(wt(&media, None, &origin)).await;
    assert_eq!(status, 401, "a ticket opens media once");
    // A made-up ticket is refused.
    let forged = format!(
        "{}/media?ticket=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        path_of(&d.uri)
    );
    let (status, _, _) = h.send(wt(&forged, None, &origin)).await;
    assert_eq!(status, 401);
}

/// An open streaming `GET` (a handler's or a call's events) read event by event.
struct EventReader {
    stream: h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>,
    dec: EventDecoder,
    // The connection lives as long as the reader: its request sender and endpoint.
    _send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
    _ep: quinn::Endpoint,
}

impl EventReader {
    /// The next event, or `None` when the server closed the stream.
    async fn next(&mut self) -> Option<Event> {
        tokio::time::timeout(HANG, async {
            loop {
                if let Some(ev) = self.dec.next_event() {
                    return Some(ev.expect("decodable event"));
                }
                match self.stream.recv_data().await {
                    Ok(Some(mut chunk)) => {
                        let b = chunk.copy_to_bytes(chunk.remaining());
                        self.dec.push(&b);
                    }
                    _ => return None,
                }
            }
        })
        .await
        .expect("timed out waiting for an event")
    }

    /// The next event that is not a keepalive.
    async fn next_real(&mut self) -> Option<Event> {
        loop {
            match self.next().await {
                Some(e) if e.name == EventName::Ping => continue,
                other => return other,
            }
        }
    }
}

impl Harness {
    /// Opens a streaming GET of `path`: its status, and the reader when it is 200.
    async fn stream(&self, path: &str, token: &str) -> (http::StatusCode, Option<EventReader>) {
        let (ep, mut send) = self.h3_client().await;
        let req = http::Request::get(format!(
            "https://localhost:{}{path}",
            self.server_addr.port()
        ))
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
        let mut stream = send.send_request(req).await.unwrap();
        stream.finish().await.unwrap();
        let resp = tokio::time::timeout(HANG, stream.recv_response())
            .await
            .expect("no response")
            .unwrap();
        if resp.status() != http::StatusCode::OK {
            return (resp.status(), None);
        }
        let reader = EventReader {
            stream,
            dec: EventDecoder::new(),
            _send: send,
            _ep: ep,
        };
        (resp.status(), Some(reader))
    }

    /// Offers server-side call `key` as `{TG}/calls/{id}` and returns how many handlers rang.
    async fn offer(&mut self, key: CallKey, id: &str) -> usize {
        self.server_cmd
            .send(RiptCmd::Offer {
                call: key,
                tg: TG.into(),
                id: id.into(),
                description: CallDescription {
                    uri: String::new(),
                    handler: None,
                    direction: Some(CallDirection::Inbound),
                    destination: "page".into(),
                    from: Some("+12155551212".into()),
                    state: CallState::Proceeding,
                    proposal: Proposal::default(),
                    media_ticket: None,
                },
            })
            .unwrap();
        next_u(&mut self.server_seen, |e| match e {
            RiptEvent::Offered { call, handlers } if call == key => Some(handlers),
            _ => None,
        })
        .await
    }
}

impl Harness {
    /// The status of one request (see [`Harness::raw`]).
    async fn status(
        &self,
        method: http::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> u16 {
        self.raw(method, path, token, body).await.0.as_u16()
    }
}

impl Harness {
    /// Offers `key` as `{TG}/calls/{id}`: it must ring on exactly `readers`, each seeing
    /// `incoming` for it.
    async fn offer_ringing<const N: usize>(
        &mut self,
        key: CallKey,
        id: &str,
        readers: [&mut EventReader; N],
    ) {
        assert_eq!(self.offer(key, id).await, N, "handlers rung for {id}");
        for r in readers {
            let ev = r.next_real().await.expect("incoming");
            assert_eq!(ev.name, EventName::Incoming);
            assert!(ev.call.unwrap().ends_with(&format!("/calls/{id}")));
        }
    }
}

const HANDLER_BODY: &str = r#"{"handler-id":"HID","advertisement":{"codecs":[{"mediaType":"audio/PCMU","clockRate":8000,"payloadType":0}]}}"#;

fn handler_body(id: &str) -> String {
    HANDLER_BODY.replace("HID", id)
}

/// protocol.md §2.3: handlers belong to the client that registered them.
#[tokio::test]
async fn handlers_belong_to_the_client_that_registered_them() {
    use http::Method as M;
    let h = harness().await;
    let base = format!("{PREFIX}/{TG}/handlers");
    let one = format!("{base}/h1");
    let two = format!("{base}/h2");
    let (h1, h2, h9) = (handler_body("h1"), handler_body("h2"), handler_body("h9"));
    let (st, hd, body) = h.raw(M::POST, &base, Some("good"), Some(&h1)).await;
    assert_eq!(st, 201, "{body:?}");
    assert!(hv(&hd, "location").unwrap().ends_with(&one));
    let (st, _) = h.stream(&format!("{one}/events"), "other").await;
    assert_eq!(st, 404, "someone else's handler has no stream for us");
    // In order: (method, path, token, body, status, why).
    type Step<'a> = (M, &'a str, &'a str, Option<&'a str>, u16, &'a str);
    let steps: [Step; 9] = [
        (M::POST, &base, "other", Some(&h1), 409, "someone else's id"),
        (M::PUT, &one, "other", Some(&h1), 409, "someone else's id"),
        (M::GET, &one, "other", None, 404, "someone else's handler"),
        (
            M::DELETE,
            &one,
            "other",
            None,
            404,
            "someone else's handler",
        ),
        (
            M::PUT,
            &one,
            "good",
            Some(&h1),
            200,
            "the owner replaces it",
        ),
        (
            M::PUT,
            &one,
            "good",
            Some(&h9),
            400,
            "the body names another handler",
        ),
        (M::PUT, &two, "good", Some(&h2), 201, "PUT creates"),
        (M::DELETE, &one, "good", None, 204, "the owner removes it"),
        (M::GET, &one, "good", None, 404, "removed"),
    ];
    for (i, (m, path, token, body, want, why)) in steps.into_iter().enumerate() {
        let got = h.status(m.clone(), path, Some(token), body).await;
        assert_eq!(got, want, "step {i}: {m} {path} as {token}: {why}");
    }
    // A call naming a handler that is not registered (any more) is refused before the engine.
    let call = r#"{"destination":"200","handler":"HURI"}"#.replace(
        "HURI",
        &format!("https://localhost:{}{one}", h.server_addr.port()),
    );
    let calls = format!("{PREFIX}/{TG}/calls");
    let (st, _, body) = h.raw(M::POST, &calls, Some("good"), Some(&call)).await;
    assert_eq!(st, 400, "{body:?}");
}

/// protocol.md §2.7: an offered call rings every reachable handler; one takes it, the others
/// stop ringing; the caller giving up stops the ringing everywhere.
#[tokio::test]
async fn offered_calls_ring_handlers_and_one_takes_each() {
    let mut h = harness().await;
    let base = format!("{PREFIX}/{TG}/handlers");
    // No handler reachable yet: nobody rings.
    assert_eq!(h.offer(CallKey(900), "in0").await, 0);
    h.server_cmd
        .send(RiptCmd::ServerEnd { call: CallKey(900) })
        .unwrap();
    for id in ["h1", "h2"] {
        assert_eq!(
            h.status(
                http::Method::POST,
                &base,
                Some("good"),
                Some(&handler_body(id)),
            )
            .await,
            201
        );
    }
    // Registered but not listening: still not reachable.
    assert_eq!(h.offer(CallKey(901), "in1").await, 0);
    h.server_cmd
        .send(RiptCmd::ServerEnd { call: CallKey(901) })
        .unwrap();
    let (_, r1) = h.stream(&format!("{base}/h1/events"), "good").await;
    let (_, r2) = h.stream(&format!("{base}/h2/events"), "good").await;
    let (mut r1, mut r2) = (r1.unwrap(), r2.unwrap());

    assert_eq!(h.offer(CallKey(902), "in2").await, 2);
    let call_path = format!("{PREFIX}/{TG}/calls/in2");
    for r in [&mut r1, &mut r2] {
        let ev = r.next_real().await.expect("incoming");
        assert_eq!(ev.name, EventName::Incoming);
        assert!(ev.call.as_deref().unwrap().ends_with(&call_path));
        assert_eq!(ev.from.as_deref(), Some("+12155551212"));
        assert_eq!(ev.destination.as_deref(), Some("page"));
    }
    let (st, _, body) = h
        .raw(http::Method::GET, &call_path, Some("good"), None)
        .await;
    assert_eq!(st, 200);
    let d: CallDescription = serde_json::from_slice(&body).unwrap();
    assert_eq!(d.direction, Some(CallDirection::Inbound));

    let h1_uri = format!("https://localhost:{}{base}/h1", h.server_addr.port());
    let h2_uri = format!("https://localhost:{}{base}/h2", h.server_addr.port());
    let take = |u: &str| format!(r#"{{"handler":"{u}"}}"#);
    // Not the owner of h1: 403. A body that is not a take: 400.
    assert_eq!(
        h.status(
            http::Method::POST,
            &call_path,
            Some("other"),
            Some(&take(&h1_uri)),
        )
        .await,
        403
    );
    assert_eq!(
        h.status(http::Method::POST, &call_path, Some("good"), Some("{}"))
            .await,
        400
    );
    let (st, _, body) = h
        .raw(
            http::Method::POST,
            &call_path,
            Some("good"),
            Some(&take(&h1_uri)),
        )
        .await;
    assert_eq!(st, 200, "{body:?}");
    let d: CallDescription = serde_json::from_slice(&body).unwrap();
    assert_eq!(d.handler.as_deref(), Some(h1_uri.as_str()));
    assert!(d.uri.ends_with(&call_path));
    let taken = next_u(&mut h.server_seen, |e| match e {
        RiptEvent::TakeCall { call, handler, .. } => Some((call, handler)),
        _ => None,
    })
    .await;
    assert_eq!(taken.0, CallKey(902));
    assert_eq!(taken.1.handler_id, "h1");
    // h2 stops ringing; a second take is a conflict.
    let ev = r2.next_real().await.expect("end on h2");
    assert_eq!(ev.name, EventName::End);
    assert!(ev.reason.unwrap().contains("Call completed elsewhere"));
    assert_eq!(
        h.status(
            http::Method::POST,
            &call_path,
            Some("good"),
            Some(&take(&h2_uri)),
        )
        .await,
        409
    );

    // The next caller gives up while it rings on both.
    h.offer_ringing(CallKey(903), "in3", [&mut r1, &mut r2])
        .await;
    let mut end = Event::new(EventName::End);
    end.reason = Some("SIP;cause=487;text=\"Request Terminated\"".into());
    h.server_cmd
        .send(RiptCmd::ServerSend {
            call: CallKey(903),
            event: end,
        })
        .unwrap();
    h.server_cmd
        .send(RiptCmd::ServerEnd { call: CallKey(903) })
        .unwrap();
    for r in [&mut r1, &mut r2] {
        let ev = r.next_real().await.expect("end");
        assert_eq!(ev.name, EventName::End);
        assert!(ev.call.unwrap().ends_with("/calls/in3"));
        assert!(ev.reason.unwrap().contains("cause=487"));
    }
    assert_eq!(
        h.status(
            http::Method::POST,
            &format!("{PREFIX}/{TG}/calls/in3"),
            Some("good"),
            Some(&take(&h1_uri)),
        )
        .await,
        404
    );

    // A handler that starts listening while a call rings gets it too.
    h.offer_ringing(CallKey(904), "in4", [&mut r1, &mut r2])
        .await;
    assert_eq!(
        h.status(
            http::Method::POST,
            &base,
            Some("good"),
            Some(&handler_body("h3")),
        )
        .await,
        201
    );
    let (_, r3) = h.stream(&format!("{base}/h3/events"), "good").await;
    let ev = r3.unwrap().next_real().await.expect("the ringing call");
    assert!(ev.call.unwrap().ends_with("/calls/in4"));

    // Removing a handler closes its stream.
    assert_eq!(
        h.status(
            http::Method::DELETE,
            &format!("{base}/h2"),
            Some("good"),
            None,
        )
        .await,
        204
    );
    assert!(r2.next_real().await.is_none(), "h2's stream ends");
}

/// docs/protocol.md §8.3: the server's SETTINGS carry every WebTransport code point Chromium and
/// Safari look for, with RFC 9297 datagrams and extended CONNECT, each exactly once.
#[tokio::test]
async fn server_settings_carry_the_webtransport_superset() {
    let h = harness().await;
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = ep
        .connect_with(h.client_cfg.clone(), h.server_addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let settings = tokio::time::timeout(HANG, async {
        loop {
            let mut recv = conn.accept_uni().await.expect("a server uni stream");
            let mut start = Vec::new();
            let mut buf = [0u8; 256];
            // The control stream starts with 0x00; the QPACK streams with 0x02/0x03.
            while let Ok(Some(n)) = recv.read(&mut buf).await {
                start.extend_from_slice(&buf[..n]);
                if start.first() != Some(&0x00) {
                    break;
                }
                if let Some(s) = riptide::ript::h3settings::parse_settings(&start) {
                    return s;
                }
            }
        }
    })
    .await
    .expect("the server's SETTINGS");
    for (id, value) in [
        (0x08, 1),       // ENABLE_CONNECT_PROTOCOL
        (0x33, 1),       // H3_DATAGRAM
        (0xffd277, 1),   // H3_DATAGRAM, Chromium's legacy code point
        (0x2b603742, 1), // ENABLE_WEBTRANSPORT, draft-02
        (0xc671706a, 1), // WT_MAX_SESSIONS, draft-07
        (0x14e9cd29, 1), // WT_MAX_SESSIONS, draft-13/14
    ] {
        let n = settings.iter().filter(|(i, _)| *i == id).count();
        assert_eq!(n, 1, "setting {id:#x} once in {settings:x?}");
        assert!(
            settings.contains(&(id, value)),
            "setting {id:#x} = {value} in {settings:x?}"
        );
    }
}
