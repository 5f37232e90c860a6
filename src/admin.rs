//! The admin listener: plain HTTP/1.1 with `GET /metrics` (Prometheus), `GET /healthz`, and
//! `POST /reload` (re-read the TLS certificate files, as SIGHUP does).
//!
//! It binds to loopback by default and carries no secrets, so it has no authentication: a
//! reload only re-reads files the configuration names.

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

/// Serves admin requests on an already bound listener; returns only on an accept error that is
/// not about one connection.
pub async fn serve_on(listener: TcpListener, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    serve_with_reload(listener, metrics, None).await
}

/// [`serve_on`], with `POST /reload` answered by `reload` (404 without it).
pub async fn serve_with_reload(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    reload: Option<ReloadHook>,
) -> anyhow::Result<()> {
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
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let metrics = metrics.clone();
                let reload = reload.clone();
                async move { Ok::<_, Infallible>(route(&req, &metrics, reload.as_ref())) }
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
) -> Response<Full<Bytes>> {
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
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
        (false, "/metrics" | "/healthz") => {
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
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n".into(),
        ),
    }
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

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let held = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = held.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err().to_string();
        assert!(err.contains(&addr.to_string()), "{err}");
    }
}
