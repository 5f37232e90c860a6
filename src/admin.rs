//! The admin listener: plain HTTP/1.1 with `GET /metrics` (Prometheus), `GET /healthz`,
//! `POST /reload` (re-read the TLS certificate files, as SIGHUP does), and the browser demo
//! under `/web/`: the dial pad `web/demo.html` and its modules, built into the binary, and
//! `/web/config.json`, which tells the page where the HTTP/3 API is and which certificate hash
//! to hand WebTransport.
//!
//! It binds to loopback by default and carries no secrets, so it has no authentication: a
//! reload only re-reads files the configuration names, and the page asks its user for a token.

use crate::metrics::Metrics;
use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// A slow or idle client must not hold a connection (and its task) forever.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the admin listener; separate from [`serve_on`] so the gateway fails fast at start-up.
pub async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(listen)
        .await
        .with_context(|| format!("admin listener: cannot bind {listen}"))
}

/// Binds `listen` and serves until the task is dropped.
pub async fn serve(listen: SocketAddr, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    serve_on(bind(listen).await?, metrics).await
}

/// What `POST /reload` runs: one line per reloaded item, `Err` when any failed.
pub type ReloadHook = Arc<dyn Fn() -> Result<Vec<String>, Vec<String>> + Send + Sync>;

/// The certificate (DER) the HTTP/3 listener presents now, when browsers may trust it by hash
/// (the generated development certificate); `None` for an operator's certificate, which
/// browsers verify the usual way.
pub type DevCertSource = Arc<dyn Fn() -> Option<Vec<u8>> + Send + Sync>;

/// What `GET /web/config.json` tells the demo page.
#[derive(Clone)]
pub struct WebSettings {
    /// `https://host:port` of the HTTP/3 API.
    pub api: String,
    /// Every `[[tg]]` served.
    pub tgs: Vec<String>,
    /// The TGs whose handlers `[[sip_route]] handlers` rings: where a page registers to be called.
    pub handler_tgs: Vec<String>,
    /// `[http3] cors_origins`, so a page can tell its user that its own origin is missing.
    pub cors_origins: Vec<String>,
    /// Asked on every request: the certificate is renewed and reloaded while the gateway runs.
    pub dev_cert: DevCertSource,
}

impl WebSettings {
    /// The settings of a gateway running `cfg`, its HTTP/3 API at `authority` (`host:port`,
    /// the name call URIs use) and serving the certificates of `http3_certs`.
    pub fn from_config(
        cfg: &crate::config::Config,
        authority: &str,
        http3_certs: Arc<crate::tls::CertSlot>,
    ) -> Self {
        let mut handler_tgs: Vec<String> = Vec::new();
        for tg in cfg.sip_routes.iter().filter_map(|r| r.handlers.clone()) {
            if !handler_tgs.contains(&tg) {
                handler_tgs.push(tg);
            }
        }
        WebSettings {
            api: format!("https://{authority}"),
            tgs: cfg.tgs.iter().map(|t| t.name.clone()).collect(),
            handler_tgs,
            cors_origins: cfg.http3.cors_origins.clone(),
            dev_cert: Arc::new(move || {
                if !matches!(
                    http3_certs.source(),
                    Some(crate::tls::CertSource::Generated { .. })
                ) {
                    return None;
                }
                let identity = http3_certs.identity();
                identity.cert_chain.first().map(|c| c.as_ref().to_vec())
            }),
        }
    }

    /// `serverCertificateHashes` for WebTransport (SHA-256 of the certificate, base64 `value`
    /// and `hex`), and `spkiSha256` (base64 SHA-256 of its public key) for Chromium's
    /// `--ignore-certificate-errors-spki-list`: fetch() has no certificate-hash option, so a
    /// page's API requests to a self-signed gateway need that flag (and, riptide having no TCP
    /// listener to announce HTTP/3 with Alt-Svc, `--origin-to-force-quic-on`).
    fn config_json(&self) -> String {
        use base64::engine::general_purpose::STANDARD as B64;
        use base64::Engine as _;
        let der = (self.dev_cert)();
        let hashes: Vec<serde_json::Value> = der
            .iter()
            .map(|der| {
                let hash = crate::tls::sha256(der);
                serde_json::json!({
                    "algorithm": "sha-256",
                    "value": B64.encode(hash),
                    "hex": crate::tls::sha256_hex(der),
                })
            })
            .collect();
        let spki = der.as_deref().and_then(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            Some(B64.encode(crate::tls::sha256(cert.tbs_certificate.subject_pki.raw)))
        });
        let body = serde_json::json!({
            "api": self.api,
            "tgs": self.tgs,
            "handlerTgs": self.handler_tgs,
            "corsOrigins": self.cors_origins,
            "serverCertificateHashes": hashes,
            "spkiSha256": spki,
        });
        let mut s = body.to_string();
        s.push('\n');
        s
    }
}

/// The files of `web/`, built in so that the page always matches the gateway serving it.
const WEB_FILES: &[(&str, &str, &str)] = &[
    (
        "/web/",
        "text/html; charset=utf-8",
        include_str!("../web/demo.html"),
    ),
    (
        "/web/demo.html",
        "text/html; charset=utf-8",
        include_str!("../web/demo.html"),
    ),
    (
        "/web/riptide-session.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/riptide-session.js"),
    ),
    (
        "/web/g711.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/g711.js"),
    ),
    (
        "/web/worklets.js",
        "text/javascript; charset=utf-8",
        include_str!("../web/worklets.js"),
    ),
];

/// Serves admin requests on an already bound listener; returns only on an accept error that is
/// not about one connection.
pub async fn serve_on(listener: TcpListener, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    serve_admin(listener, metrics, None, None).await
}

/// [`serve_on`], with `POST /reload` answered by `reload` (404 without it).
pub async fn serve_with_reload(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    reload: Option<ReloadHook>,
) -> anyhow::Result<()> {
    serve_admin(listener, metrics, reload, None).await
}

/// [`serve_with_reload`], plus the demo page under `/web/` when `web` is given (404 without).
pub async fn serve_admin(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    reload: Option<ReloadHook>,
    web: Option<WebSettings>,
) -> anyhow::Result<()> {
    let web = web.map(Arc::new);
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, "admin listener up");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            // Per-connection failures (reset before accept, fd exhaustion) are transient.
            Err(e) if is_transient(&e) => {
                tracing::warn!("admin accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => return Err(e).context("admin listener: accept failed"),
        };
        let metrics = metrics.clone();
        let reload = reload.clone();
        let web = web.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let metrics = metrics.clone();
                let reload = reload.clone();
                let web = web.clone();
                async move {
                    Ok::<_, Infallible>(route(&req, &metrics, reload.as_ref(), web.as_deref()))
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true);
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!(%peer, "admin connection: {e}");
            }
        });
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || e.raw_os_error() == Some(24) // EMFILE: wait for connections to close
}

fn route(
    req: &Request<Incoming>,
    metrics: &Metrics,
    reload: Option<&ReloadHook>,
    web: Option<&WebSettings>,
) -> Response<Full<Bytes>> {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    if let Some(web) = web {
        if let Some(r) = route_web(req.uri().path(), get, web) {
            return r;
        }
    }
    if let (Some(reload), "/reload") = (reload, req.uri().path()) {
        if req.method() != Method::POST {
            let mut r = respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "method not allowed\n".into(),
            );
            r.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
            return r;
        }
        // Reading two small files; not worth a blocking-pool hop.
        let (status, lines) = match reload() {
            Ok(lines) => (StatusCode::OK, lines),
            Err(lines) => (StatusCode::INTERNAL_SERVER_ERROR, lines),
        };
        let mut body = lines.join("\n");
        body.push('\n');
        return respond(status, "text/plain; charset=utf-8", body);
    }
    match (get, req.uri().path()) {
        (true, "/metrics") => respond(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        (true, "/healthz") => respond(StatusCode::OK, "text/plain; charset=utf-8", "ok".into()),
        (false, "/metrics" | "/healthz") => get_only(),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".into(),
        ),
    }
}

/// 405 for a resource that is only read.
fn get_only() -> Response<Full<Bytes>> {
    let mut r = respond(
        StatusCode::METHOD_NOT_ALLOWED,
        "text/plain; charset=utf-8",
        "method not allowed\n".into(),
    );
    r.headers_mut().insert(
        http::header::ALLOW,
        http::HeaderValue::from_static("GET, HEAD"),
    );
    r
}

/// The `/web` resources; `None` for any other path.
fn route_web(path: &str, get: bool, web: &WebSettings) -> Option<Response<Full<Bytes>>> {
    if path != "/web" && !path.starts_with("/web/") {
        return None;
    }
    if !get {
        return Some(get_only());
    }
    let mut r = if path == "/web" {
        // The page's relative module URLs resolve against `/web/`, not `/`.
        let mut r = respond(
            StatusCode::PERMANENT_REDIRECT,
            "text/plain; charset=utf-8",
            "/web/\n".into(),
        );
        r.headers_mut().insert(
            http::header::LOCATION,
            http::HeaderValue::from_static("/web/"),
        );
        r
    } else if path == "/web/config.json" {
        respond(StatusCode::OK, "application/json", web.config_json())
    } else if let Some((_, ct, body)) = WEB_FILES.iter().find(|(p, _, _)| *p == path) {
        respond(StatusCode::OK, ct, (*body).to_string())
    } else {
        respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".into(),
        )
    };
    // Revalidated on every load: the page must match the running gateway (after an upgrade),
    // and config.json carries a certificate hash that changes when the certificate is renewed.
    let h = r.headers_mut();
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    Some(r)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_healthz_and_404() {
        let metrics = Arc::new(Metrics::default());
        metrics.call_started();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve_on(listener, metrics));

        let r = get(addr, "/metrics").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("content-type: text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("\nriptide_calls_active 1\n"), "{r}");

        let r = get(addr, "/healthz").await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\nok"),
            "{r}"
        );

        let r = get(addr, "/nope").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        task.abort();
    }

    async fn request(addr: SocketAddr, method: &str, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn post_reload_runs_the_hook_and_reports_failure() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let hook: ReloadHook = {
            let calls = calls.clone();
            Arc::new(move || match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Ok(vec!["http3: now abc (was def)".into()]),
                _ => Err(vec!["http3: reload failed, keeping abc: bad.pem".into()]),
            })
        };
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve_with_reload(
            listener,
            Arc::new(Metrics::default()),
            Some(hook),
        ));
        let r = request(addr, "GET", "/reload").await;
        assert!(
            r.starts_with("HTTP/1.1 405") && r.contains("allow: POST"),
            "{r}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0, "GET does not reload");
        let r = request(addr, "POST", "/reload").await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("now abc"),
            "{r}"
        );
        let r = request(addr, "POST", "/reload").await;
        assert!(
            r.starts_with("HTTP/1.1 500") && r.contains("bad.pem"),
            "{r}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        task.abort();

        // Without a hook there is no such resource.
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve_on(listener, Arc::new(Metrics::default())));
        let r = request(addr, "POST", "/reload").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        task.abort();
    }

    /// The header `name` of a raw HTTP/1.1 answer (names are lower case, as hyper sends them).
    fn header<'a>(r: &'a str, name: &str) -> Option<&'a str> {
        let head = r.split("\r\n\r\n").next()?;
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
    }

    fn body(r: &str) -> &str {
        r.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    #[tokio::test]
    async fn serves_the_demo_page_and_a_live_config() {
        use std::sync::Mutex;
        let cert = Arc::new(Mutex::new(Some(b"first".to_vec())));
        let web = WebSettings {
            api: "https://127.0.0.1:4443".into(),
            tgs: vec!["local".into(), "web".into()],
            handler_tgs: vec!["web".into()],
            cors_origins: vec!["http://127.0.0.1:9060".into()],
            dev_cert: {
                let cert = cert.clone();
                Arc::new(move || cert.lock().unwrap().clone())
            },
        };
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve_admin(
            listener,
            Arc::new(Metrics::default()),
            None,
            Some(web),
        ));

        for (path, ct, needle) in [
            ("/web/", "text/html; charset=utf-8", "<title>riptide"),
            (
                "/web/demo.html",
                "text/html; charset=utf-8",
                "riptide-session.js",
            ),
            (
                "/web/riptide-session.js",
                "text/javascript; charset=utf-8",
                "export class Session",
            ),
            (
                "/web/g711.js",
                "text/javascript; charset=utf-8",
                "export function decode",
            ),
            (
                "/web/worklets.js",
                "text/javascript; charset=utf-8",
                "registerProcessor",
            ),
        ] {
            let r = get(addr, path).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{path}: {r}");
            assert_eq!(header(&r, "content-type"), Some(ct), "{path}");
            assert_eq!(header(&r, "cache-control"), Some("no-cache"), "{path}");
            assert_eq!(
                header(&r, "x-content-type-options"),
                Some("nosniff"),
                "{path}"
            );
            assert!(body(&r).contains(needle), "{path} lacks {needle:?}");
        }

        let r = get(addr, "/web/config.json").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        assert_eq!(header(&r, "cache-control"), Some("no-cache"));
        let v: serde_json::Value = serde_json::from_str(body(&r)).unwrap();
        assert_eq!(v["api"], "https://127.0.0.1:4443");
        assert_eq!(v["tgs"], serde_json::json!(["local", "web"]));
        assert_eq!(v["handlerTgs"], serde_json::json!(["web"]));
        assert_eq!(
            v["corsOrigins"],
            serde_json::json!(["http://127.0.0.1:9060"])
        );
        let h = &v["serverCertificateHashes"][0];
        assert_eq!(h["algorithm"], "sha-256");
        let first = crate::tls::sha256_hex(b"first");
        assert_eq!(h["hex"], first);
        use base64::Engine as _;
        let value = base64::engine::general_purpose::STANDARD
            .decode(h["value"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            crate::tls::parse_sha256_fingerprint(&first)
                .unwrap()
                .to_vec(),
            value
        );
        // Not a certificate: no public key to hash.
        assert_eq!(v["spkiSha256"], serde_json::Value::Null);

        // The hash is read per request: a renewed certificate shows at once; an operator's
        // certificate (no hash) gives none.
        *cert.lock().unwrap() = Some(b"second".to_vec());
        let v: serde_json::Value =
            serde_json::from_str(body(&get(addr, "/web/config.json").await)).unwrap();
        assert_eq!(
            v["serverCertificateHashes"][0]["hex"],
            crate::tls::sha256_hex(b"second")
        );
        *cert.lock().unwrap() = None;
        let v: serde_json::Value =
            serde_json::from_str(body(&get(addr, "/web/config.json").await)).unwrap();
        assert_eq!(v["serverCertificateHashes"], serde_json::json!([]));

        let r = get(addr, "/web").await;
        assert!(r.starts_with("HTTP/1.1 308"), "{r}");
        assert_eq!(header(&r, "location"), Some("/web/"));
        let r = get(addr, "/web/../metrics").await;
        assert!(!r.contains("riptide_calls_active"), "{r}");
        let r = get(addr, "/web/nope.js").await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = request(addr, "POST", "/web/").await;
        assert!(
            r.starts_with("HTTP/1.1 405") && r.contains("allow: GET, HEAD"),
            "{r}"
        );
        // The other routes are still there.
        assert!(get(addr, "/healthz").await.ends_with("\r\n\r\nok"));
        task.abort();

        // Without the settings there is no page.
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve_on(listener, Arc::new(Metrics::default())));
        assert!(get(addr, "/web/").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }

    #[test]
    fn config_hash_follows_the_generated_certificate_only() {
        let dir = std::env::temp_dir().join(format!("riptide-admin-web-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = crate::config::embedded_default();
        cfg.http3.cors_origins = vec!["http://127.0.0.1:9060".into()];
        let generated = crate::tls::CertSlot::load(crate::tls::CertSource::Generated {
            data_dir: dir.clone(),
            server_name: "localhost".into(),
        })
        .unwrap();
        let web = WebSettings::from_config(&cfg, "localhost:4443", generated.clone());
        assert_eq!(web.api, "https://localhost:4443");
        assert_eq!(web.tgs, vec!["local".to_string()]);
        let want = std::fs::read_to_string(dir.join(crate::tls::DEV_CERT_HASH_FILE)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&web.config_json()).unwrap();
        assert_eq!(v["serverCertificateHashes"][0]["hex"], want.trim());
        assert_eq!(
            v["serverCertificateHashes"][0]["hex"],
            generated.fingerprint_sha256(),
            "the live slot, not a copy"
        );
        assert_eq!(v["spkiSha256"].as_str().map(str::len), Some(44));

        // An operator's certificate is verified by browsers as usual: no hash to pin.
        let files = crate::tls::CertSlot::load(crate::tls::CertSource::Files {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        })
        .unwrap();
        let web = WebSettings::from_config(&cfg, "localhost:4443", files);
        assert!((web.dev_cert)().is_none());
        let v: serde_json::Value = serde_json::from_str(&web.config_json()).unwrap();
        assert_eq!(v["serverCertificateHashes"], serde_json::json!([]));
        assert_eq!(v["spkiSha256"], serde_json::Value::Null);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let held = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = held.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err().to_string();
        assert!(err.contains(&addr.to_string()), "{err}");
    }
}
