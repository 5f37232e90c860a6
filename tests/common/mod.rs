//! What several integration tests share.

use std::net::SocketAddr;
use std::path::Path;

/// A QUIC client configuration that trusts the HTTP/3 certificate a gateway with `data_dir`
/// serves at `addr`, by its pin, the way a `[[ript_peer]]` with `pin_sha256` would.
pub fn pinned_client_config(addr: SocketAddr, data_dir: &Path) -> quinn::ClientConfig {
    let id = riptide::tls::load_or_generate(data_dir, "localhost", None, None).expect("identity");
    let mut cfg = riptide::config::embedded_default();
    cfg.base_dir = ".".into();
    let peer = riptide::config::RiptPeerConfig {
        name: "probe".into(),
        url: format!("https://{addr}"),
        server_name: Some("localhost".into()),
        tg: "local".into(),
        ca_file: None,
        pin_sha256: Some(id.fingerprint_sha256.clone()),
        token: Some("x".into()),
        token_file: None,
        codecs: riptide::config::default_codecs(),
    };
    riptide::tls::quic_client_config(&peer, &cfg).expect("client config")
}
