//! TLS hardening that a test can see from outside: the SIP-TLS listener speaks TLS 1.2 and 1.3
//! only (checked with Debian's openssl as an independent client), and the whole dependency tree
//! has one crypto provider (ring; ADR 0006).

use riptide::config;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

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
