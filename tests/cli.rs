//! The `riptide` binary as a user runs it.

use riptide::auth::{LocalIssuer, TokenVerifier};
use riptide::config::KernelPorts;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn riptide(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_riptide"))
        .args(args)
        .output()
        .expect("the riptide binary runs")
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "riptide-cli-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_config_accepts_the_shipped_files() {
    for name in ["riptide.toml", "pair-a.toml", "pair-b.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name);
        let out = riptide(&["check-config", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), format!("{}: ok", path.display()));
        // Each file's media range holds its sip.max_calls.
        let err = text(&out.stderr);
        assert!(!err.contains("calls with a SIP leg"), "{name}: {err}");
        // The shipped default stays below Linux's ephemeral ports; so do the pair's ranges.
        let kernel = KernelPorts::read().expect("this host's port settings");
        if *kernel.ephemeral.start() >= 30000 {
            assert_eq!(err, "", "{name}");
        }
    }
}

#[test]
fn check_config_warns_about_a_media_range_that_cannot_work_as_meant() {
    let dir = temp_dir("ports");
    let path = dir.join("ports.toml");
    // 1000 ports from the start of this host's ephemeral range: 500 calls, below max_calls.
    let kernel = KernelPorts::read().expect("this host's port settings");
    let min = kernel.ephemeral.start() + kernel.ephemeral.start() % 2;
    let max = min + 999;
    assert!(
        max <= *kernel.ephemeral.end(),
        "the host's ephemeral range is tiny"
    );
    std::fs::write(
        &path,
        format!(
            "[sip]\nudp = [\"127.0.0.1:5060\"]\nmax_calls = 600\n\n[media]\n\
             port_min = {min}\nport_max = {max}\n"
        ),
    )
    .unwrap();
    let out = riptide(&["check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "warnings do not fail the check");
    assert_eq!(text(&out.stdout).trim(), format!("{}: ok", path.display()));
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "warning: media.port_min-port_max ({min}-{max}) holds 500 calls with a SIP leg"
        )) && lines[0].contains("fewer than sip.max_calls (600)"),
        "{err}"
    );
    let reserved = kernel
        .reserved
        .iter()
        .map(|r| (min..=max).filter(|p| r.contains(p)).count())
        .sum::<usize>();
    assert!(
        lines[1].starts_with(&format!(
            "warning: {} ports of media.port_min-port_max",
            1000 - reserved
        )) && lines[1].contains("net.ipv4.ip_local_reserved_ports"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_config_reports_a_broken_file_with_exit_2() {
    let dir = temp_dir("broken");
    let path = dir.join("broken.toml");
    std::fs::write(
        &path,
        "[sip]\nudp = [\"127.0.0.1:5060\"]\n\n[[sip_route]]\nript_peer = \"ghost\"\n",
    )
    .unwrap();
    let out = riptide(&["check-config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{}:5:", path.display())), "{err}");
    assert!(err.contains("sip_route[0].ript_peer"), "{err}");
    assert!(err.contains("ghost"), "{err}");
    assert!(text(&out.stdout).is_empty());

    let out = riptide(&["check-config", dir.join("absent.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("absent.toml"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_with_a_broken_config_exits_2_before_starting() {
    let dir = temp_dir("serve");
    let path = dir.join("bad.toml");
    std::fs::write(&path, "[media]\nport_min = 5000\nport_max = 4000\n").unwrap();
    let out = riptide(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("media.port_min"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn token_mint_produces_a_token_the_local_issuer_accepts() {
    let dir = temp_dir("mint");
    let data = dir.join("data");
    let out = riptide(&[
        "token",
        "mint",
        "--data-dir",
        data.to_str().unwrap(),
        "--subject",
        "gateway-a",
        "--ttl-secs",
        "600",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    assert!(token.split('.').all(|p| !p.is_empty()));

    let issuer = LocalIssuer::load_or_create(&data).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let p = issuer.verify(&token, now).unwrap();
    assert_eq!(p.subject, "gateway-a");
    assert_eq!(p.scopes, ["calls:write", "tgs:read", "handlers:write"]);
    // The ttl was honoured: past it (and the leeway) the token is refused.
    assert!(issuer.verify(&token, now + 600 + 120).is_err());

    let out = riptide(&[
        "token",
        "mint",
        "--data-dir",
        data.to_str().unwrap(),
        "--scope",
        "tgs:read",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let p = issuer.verify(text(&out.stdout).trim(), now).unwrap();
    assert_eq!(p.scopes, ["tgs:read"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn token_mint_rejects_config_and_data_dir_together() {
    let out = riptide(&[
        "token",
        "mint",
        "--config",
        "x.toml",
        "--data-dir",
        "/tmp/x",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn token_revoke_makes_the_gateway_verifier_refuse_the_token() {
    use riptide::auth::{Revocable, Revocations, TokenVerifier};
    let dir = temp_dir("revoke");
    let data = dir.join("data");
    let d = data.to_str().unwrap();
    let mint = |subject: &str| {
        let out = riptide(&["token", "mint", "--data-dir", d, "--subject", subject]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    let (a, b) = (mint("a"), mint("b"));
    // The verifier the gateway runs: issuer key and revocation list from the data directory.
    let v = Revocable::new(
        LocalIssuer::load_or_create(&data).unwrap(),
        Revocations::open(&data),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(v.verify(&a, now).is_ok() && v.verify(&b, now).is_ok());
    let out = riptide(&["token", "revoke", "--data-dir", d, "--token", &a]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (jti, _) = riptide::auth::token_id(&a).unwrap();
    assert_eq!(text(&out.stdout).trim(), format!("revoked {jti}"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(v.verify(&a, now).is_err(), "refused within a second");
    assert!(v.verify(&b, now).is_ok());
    // By jti, and a bad token argument is a usage error.
    let (jti_b, _) = riptide::auth::token_id(&b).unwrap();
    let out = riptide(&["token", "revoke", "--data-dir", d, "--jti", &jti_b]);
    assert_eq!(out.status.code(), Some(0));
    let out = riptide(&["token", "revoke", "--data-dir", d, "--token", "junk"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a JWT"),
        "{}",
        text(&out.stderr)
    );
    // A new verifier (a restarted gateway) refuses both.
    let again = Revocable::new(
        LocalIssuer::load_or_create(&data).unwrap(),
        Revocations::open(&data),
    );
    assert!(again.verify(&a, now).is_err() && again.verify(&b, now).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
