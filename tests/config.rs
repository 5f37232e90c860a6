//! Configuration files as users write them: the shipped files load, broken ones are reported
//! with file, line and key.

use riptide::config::{embedded_default, load_file, ConfigError};
use std::path::{Path, PathBuf};

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

/// Writes `text` to a fresh file and loads it.
fn load_text(tag: &str, text: &str) -> (PathBuf, Result<riptide::config::Config, ConfigError>) {
    let dir = std::env::temp_dir().join(format!(
        "riptide-config-test-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{tag}.toml"));
    std::fs::write(&path, text).unwrap();
    let res = load_file(&path);
    let _ = std::fs::remove_dir_all(&dir);
    (path, res)
}

/// Asserts the error is a key error at `line` on `key` and its text names the file, line and key.
fn assert_error(tag: &str, text: &str, key: &str, line: usize, needle: &str) {
    let (path, res) = load_text(tag, text);
    let err = res.expect_err("the file is broken on purpose");
    let shown = err.to_string();
    assert_eq!(err.key(), Some(key), "{shown}");
    assert_eq!(err.line(), Some(line), "{shown}");
    assert!(
        shown.starts_with(&format!("{}:{line}:", path.display())),
        "{shown}"
    );
    assert!(shown.contains(&format!("`{key}`")), "{shown}");
    assert!(shown.contains(needle), "{shown}");
}

#[test]
fn shipped_default_file_equals_embedded_default() {
    let path = shipped("riptide.toml");
    let mut cfg = load_file(&path).unwrap();
    assert_eq!(cfg.base_dir, path.parent().unwrap());
    let def = embedded_default();
    // data_dir is commented out in the file, so both take the same environment-derived default.
    cfg.base_dir = def.base_dir.clone();
    assert_eq!(cfg, def);
}

#[test]
fn pair_files_load_with_paths_relative_to_the_file() {
    let a = load_file(&shipped("pair-a.toml")).unwrap();
    assert_eq!(a.general.node_name, "a");
    assert_eq!(
        a.sip.udp,
        vec!["127.0.0.1:5070".parse::<std::net::SocketAddr>().unwrap()]
    );
    assert_eq!(
        a.http3.listen,
        "127.0.0.1:4433".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!(a.ript_peers[0].url, "https://127.0.0.1:4434");
    assert_eq!(a.sip_routes[0].ript_peer, "b");
    let ca = a.resolve_path(a.ript_peers[0].ca_file.as_deref().unwrap());
    assert_eq!(ca, shipped("../interop/out/b/cert.pem"));
    assert_eq!(
        a.resolve_path(&a.general.data_dir),
        shipped("../interop/out/a")
    );

    let b = load_file(&shipped("pair-b.toml")).unwrap();
    assert_eq!(b.general.node_name, "b");
    assert_eq!(
        b.http3.listen,
        "127.0.0.1:4434".parse::<std::net::SocketAddr>().unwrap()
    );
    assert_eq!((b.media.port_min, b.media.port_max), (25000, 29999));
    assert_eq!(b.tgs[0].routes[0].sip_trunk.as_deref(), Some("pbx"));
    assert_eq!(b.sip_trunks[0].target, "sip:127.0.0.1:5080;transport=udp");
}

#[test]
fn unknown_key() {
    assert_error(
        "unknown",
        "[general]\nnode_name = \"x\"\n\n[http3]\nlisten = \"127.0.0.1:4433\"\nservername = \"x\"\n",
        "http3.servername",
        6,
        "unknown field `servername`",
    );
}

#[test]
fn wrong_type() {
    assert_error(
        "type",
        "[sip]\nmax_calls = \"lots\"\n",
        "sip.max_calls",
        2,
        "expected",
    );
    assert_error(
        "bool",
        "[media]\nlatching = 1\n",
        "media.latching",
        2,
        "expected a boolean",
    );
}

#[test]
fn missing_required_key() {
    assert_error(
        "missing",
        "[[ript_peer]]\nname = \"b\"\nurl = \"https://h:1\"\ntoken = \"t\"\npin_sha256 = \"00\"\n",
        "ript_peer[0].tg",
        1,
        "required key `tg` is missing",
    );
}

#[test]
fn bad_cross_reference() {
    assert_error(
        "xref",
        "[[tg]]\nname = \"t\"\n[[tg.route]]\nprefix = \"1\"\nsip_trunk = \"nope\"\n",
        "tg[0].route[0].sip_trunk",
        5,
        "no [[sip_trunk]] named \"nope\"",
    );
}

#[test]
fn bad_uri() {
    assert_error(
        "uri",
        "[[sip_trunk]]\nname = \"pbx\"\ntarget = \"mailto:someone\"\n",
        "sip_trunk[0].target",
        3,
        "not a sip: or sips: URI",
    );
    assert_error(
        "proxy",
        "[[sip_trunk]]\nname = \"pbx\"\ntarget = \"sip:h\"\noutbound_proxy = \"sip:\"\n",
        "sip_trunk[0].outbound_proxy",
        4,
        "sip:",
    );
}

#[test]
fn unreadable_file_names_the_file() {
    let missing = std::env::temp_dir().join("riptide-definitely-missing/none.toml");
    let err = load_file(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(err.to_string().contains("none.toml"), "{err}");
}

#[test]
fn pair_files_allow_exactly_the_test_origin() {
    for name in ["pair-a.toml", "pair-b.toml"] {
        let cfg = load_file(&shipped(name)).unwrap();
        assert_eq!(
            cfg.sip.cors_origins,
            vec!["https://allowed.example"],
            "{name}"
        );
        assert_eq!(
            cfg.http3.cors_origins,
            vec!["https://allowed.example"],
            "{name}"
        );
        assert_eq!(cfg.http3.cors_max_age_secs, 600, "{name}");
        assert!(cfg.sip_trunks.iter().all(|t| !t.preflight), "{name}");
    }
    let def = embedded_default();
    assert!(def.sip.cors_origins.is_empty() && def.http3.cors_origins.is_empty());
}

#[test]
fn wildcard_origin_is_refused_with_the_reason() {
    assert_error(
        "cors-star",
        "[http3]\nlisten = \"127.0.0.1:4433\"\ncors_origins = [\n  \"https://allowed.example\",\n  \"*\",\n]\n",
        "http3.cors_origins[1]",
        5,
        "Authorization",
    );
    assert_error(
        "sip-cors-star",
        "[sip]\ncors_origins = [\"*\"]\n",
        "sip.cors_origins[0]",
        2,
        "credentials",
    );
}

#[test]
fn malformed_origins_name_the_key() {
    for (tag, origin, needle) in [
        ("path", "https://allowed.example/", "path"),
        ("scheme", "http://allowed.example", "localhost"),
        ("case", "https://Allowed.example", "lower case"),
        ("user", "https://u@allowed.example", "user part"),
        ("port", "https://allowed.example:443", "default port"),
        ("null", "null", "null"),
        ("wild", "https://*.allowed.example", "wildcards"),
        ("bare", "allowed.example", "not an origin"),
    ] {
        assert_error(
            &format!("origin-{tag}"),
            &format!("[sip]\nudp = [\"127.0.0.1:5060\"]\ncors_origins = [\"{origin}\"]\n"),
            "sip.cors_origins[0]",
            3,
            needle,
        );
    }
    assert_error(
        "max-age",
        "[http3]\ncors_max_age_secs = 100000\n",
        "http3.cors_max_age_secs",
        2,
        "86400",
    );
    assert_error(
        "preflight",
        "[[sip_trunk]]\nname = \"pbx\"\ntarget = \"sip:h\"\npreflight = \"yes\"\n",
        "sip_trunk[0].preflight",
        4,
        "expected a boolean",
    );
}
