//! A QUIC connection over loopback with datagrams enabled, for the relay's benchmarks and tests
//! (the hubs bound straight to it, without h3).

use std::sync::Arc;

/// Both ends of one QUIC connection on 127.0.0.1 (self-signed certificate, ALPN `h3`, 1 MiB
/// datagram buffers). The endpoints are returned too: dropping one closes the connection.
pub async fn quic_pair() -> anyhow::Result<QuicPair> {
    quic_pair_with(|_| {}, async |server| server).await
}

/// [`quic_pair`], with `tune` applied to the client's transport settings (a test's congestion
/// controller, say), and the client dialling the address `path` gives for the server's (a
/// relay that delays packets, say).
pub async fn quic_pair_with(
    tune: impl FnOnce(&mut quinn::TransportConfig),
    path: impl AsyncFnOnce(std::net::SocketAddr) -> std::net::SocketAddr,
) -> anyhow::Result<QuicPair> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
    let base = || {
        let mut t = quinn::TransportConfig::default();
        t.datagram_receive_buffer_size(Some(1 << 20));
        t.datagram_send_buffer_size(1 << 20);
        t
    };
    let transport = Arc::new(base());
    let mut client_transport = base();
    tune(&mut client_transport);

    let mut s = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key.into())?;
    s.alpn_protocols = vec![b"h3".to_vec()];
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(s)?,
    ));
    sc.transport_config(transport.clone());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"h3".to_vec()];
    let mut cc = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(c)?,
    ));
    cc.transport_config(Arc::new(client_transport));

    let server = quinn::Endpoint::server(sc, "127.0.0.1:0".parse()?)?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(cc);
    let addr = server.local_addr()?;
    let accept = {
        let server = server.clone();
        tokio::spawn(async move {
            match server.accept().await {
                Some(incoming) => Ok(incoming.await?),
                None => Err(anyhow::anyhow!("server endpoint closed")),
            }
        })
    };
    let client_conn = client.connect(path(addr).await, "localhost")?.await?;
    let server_conn = accept.await??;
    Ok(QuicPair {
        client_conn,
        server_conn,
        _endpoints: (client, server),
    })
}

/// See [`quic_pair`].
pub struct QuicPair {
    pub client_conn: quinn::Connection,
    pub server_conn: quinn::Connection,
    _endpoints: (quinn::Endpoint, quinn::Endpoint),
}
