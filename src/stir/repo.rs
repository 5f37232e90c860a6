//! The certificate repository: publishes our STIR signing certificates at the HTTPS URLs we put
//! in `x5u`, for any ordinary HTTPS client (verifiers in the field use HTTP/1.1 or HTTP/2 over
//! TCP; we speak HTTP/1.1 and advertise only `http/1.1` in ALPN, so HTTP/2 clients fall back).
//!
//! `GET /<path>` answers 200 with the PEM bundle (leaf first, then intermediates),
//! `Content-Type: application/pem-certificate-chain` and `Cache-Control: max-age=86400`; unknown paths get
//! 404 and methods other than GET/HEAD 405.

use anyhow::Context;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Content type of a served bundle.
///
/// The type ATIS-1000080 asks for, defined in RFC 8555 §9.1: the chain as PEM blocks, leaf first.
pub const PEM_CONTENT_TYPE: &str = "application/pem-certificate-chain";
/// Verifiers cache for at least 24 h anyway (ATIS-1000074); say so explicitly.
pub const CACHE_CONTROL: &str = "max-age=86400";

/// A client must finish the TLS handshake and send its request head within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; further ones wait in the accept queue.
const MAX_CONNECTIONS: usize = 1024;

/// The HTTPS certificate repository (see the module docs).
pub struct CertRepo;

impl CertRepo {
    /// Binds the repository listener; separate from [`CertRepo::serve`] so start-up fails fast.
    pub async fn bind(listen: SocketAddr) -> anyhow::Result<TcpListener> {
        TcpListener::bind(listen)
            .await
            .with_context(|| format!("certificate repository: cannot bind {listen}"))
    }

    /// A TLS 1.2/1.3 server configuration for `id` (ring provider, ALPN `http/1.1`).
    pub fn tls_config(id: &crate::tls::Identity) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let tls = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .context("TLS 1.2/1.3 not supported by the crypto provider")?
            .with_no_client_auth()
            .with_single_cert(id.cert_chain.clone(), id.key_clone())
            .context("certificate and private key do not match or are unsupported")?;
        Ok(Arc::new(tls))
    }

    /// Serves `files` (path → PEM bytes; a leading `/` in the path is optional) on `listener`
    /// until the returned task is aborted or the listener fails.
    ///
    /// `tls` is used as given except for ALPN, which is set to `http/1.1` only: a client must
    /// never negotiate a protocol this server does not speak.
    pub fn serve(
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        files: HashMap<String, Vec<u8>>,
    ) -> JoinHandle<()> {
        let mut tls = (*tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let files: Arc<HashMap<String, Bytes>> = Arc::new(
            files
                .into_iter()
                .map(|(k, v)| (k.trim_start_matches('/').to_string(), Bytes::from(v)))
                .collect(),
        );
        tokio::spawn(accept_loop(listener, acceptor, files))
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    files: Arc<HashMap<String, Bytes>>,
) {
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, files = files.len(), "certificate repository up");
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) if is_transient(&e) => {
                tracing::warn!("certificate repository accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                tracing::error!("certificate repository: accept failed, stopping: {e}");
                return;
            }
        };
        let acceptor = acceptor.clone();
        let files = files.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "certificate repository TLS: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "certificate repository TLS: handshake timed out");
                    return;
                }
            };
            let svc = service_fn(move |req| {
                let files = files.clone();
                async move { Ok::<_, Infallible>(route(&req, &files)) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true);
            if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
                tracing::debug!(%peer, "certificate repository connection: {e}");
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

fn route(req: &Request<Incoming>, files: &HashMap<String, Bytes>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match files.get(req.uri().path().trim_start_matches('/')) {
        Some(pem) => {
            let mut r = Response::new(Full::new(pem.clone()));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(PEM_CONTENT_TYPE),
            );
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(CACHE_CONTROL),
            );
            r
        }
        None => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One raw HTTP/1.1 exchange over TLS; returns the whole response text.
    async fn exchange(addr: SocketAddr, ca: &rcgen::Certificate, request: &str) -> String {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect("repo.test".try_into().unwrap(), tcp)
            .await
            .unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        // A close_notify-less close shows up as an error after the data; the data is what counts.
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn serves_get_head_404_and_405() {
        let key = rcgen::generate_simple_self_signed(vec!["repo.test".to_string()]).unwrap();
        let id = crate::tls::Identity {
            cert_chain: vec![key.cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
            fingerprint_sha256: String::new(),
        };
        let tls = CertRepo::tls_config(&id).unwrap();
        let listener = CertRepo::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let pem = key.cert.pem();
        let files = HashMap::from([("/certs/sp.pem".to_string(), pem.clone().into_bytes())]);
        let task = CertRepo::serve(listener, tls, files);

        let get = |path: &str, method: &str| {
            format!("{method} {path} HTTP/1.1\r\nHost: repo.test\r\nConnection: close\r\n\r\n")
        };
        let r = exchange(addr, &key.cert, &get("/certs/sp.pem", "GET")).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            r.contains("\r\ncontent-type: application/pem-certificate-chain\r\n"),
            "{r}"
        );
        assert!(r.contains("\r\ncache-control: max-age=86400\r\n"), "{r}");
        assert!(r.ends_with(&format!("\r\n\r\n{pem}")), "{r}");

        let r = exchange(addr, &key.cert, &get("/certs/sp.pem?x=1", "HEAD")).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "HEAD has no body: {r}");

        let r = exchange(addr, &key.cert, &get("/certs/other.pem", "GET")).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");

        let r = exchange(addr, &key.cert, &get("/certs/sp.pem", "POST")).await;
        assert!(r.starts_with("HTTP/1.1 405"), "{r}");
        assert!(r.contains("\r\nallow: GET, HEAD\r\n"), "{r}");
        task.abort();
    }
}
