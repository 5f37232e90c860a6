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
    assert_eq!(a.sip_routes[0].ript_peer.as_deref(), Some("b"));
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
fn worker_threads_must_be_a_usable_count() {
    assert_error(
        "workers",
        "[general]\nnode_name = \"x\"\nworker_threads = 0\n",
        "general.worker_threads",
        3,
        "between 1 and 1024",
    );
    let (_, one) = load_text("workers-1", "[general]\nworker_threads = 1\n");
    assert_eq!(one.unwrap().general.worker_threads, Some(1));
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
    // Without a file only the demo page on our own admin listener may call the API.
    let def = embedded_default();
    assert!(def.sip.cors_origins.is_empty());
    assert_eq!(def.http3.cors_origins, vec!["http://127.0.0.1:9060"]);
    let admin = def.admin.listen.expect("the default admin listener");
    assert_eq!(format!("http://{admin}"), def.http3.cors_origins[0]);
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

/// A `[[sip_trunk]]` claiming 127.0.0.1:5061, followed by `extra` lines.
fn digest_trunk(extra: &str) -> String {
    format!(
        "[[sip_trunk]]\nname = \"pbx\"\ntarget = \"sip:127.0.0.1:5080\"\nmatch_sources = [\"127.0.0.1:5061\"]\n{extra}"
    )
}

#[test]
fn digest_keys_load() {
    let text = format!(
        "[sip]\ndigest_realm = \"gw.example\"\ndigest_lockout_secs = 60\n{}",
        digest_trunk(
            "auth = \"digest\"\nusers = [\n  { name = \"alice\", password = \"pw\" },\n  \
             { name = \"bob\", password_file = \"bob.pass\" },\n  \
             { name = \"carol\", ha1_md5 = \"0123456789abcdef0123456789abcdef\" },\n]\n\
             username = \"riptide\"\npassword_file = \"trunk.pass\"\n"
        )
    );
    let (_, res) = load_text("digest-ok", &text);
    let cfg = res.unwrap();
    assert_eq!(cfg.sip.digest_realm.as_deref(), Some("gw.example"));
    assert_eq!(cfg.sip.digest_lockout_secs, 60);
    let t = &cfg.sip_trunks[0];
    assert_eq!(t.auth, riptide::config::SipTrunkAuth::Digest);
    assert_eq!(t.users.len(), 3);
    assert_eq!(t.username.as_deref(), Some("riptide"));
    // Debug output never shows passwords or HA1 values.
    let shown = format!("{cfg:?}");
    assert!(
        !shown.contains("\"pw\"") && !shown.contains("0123456789abcdef"),
        "{shown}"
    );
    // Defaults: no digest, lockout 300 s.
    let def = embedded_default();
    assert_eq!(def.sip.digest_lockout_secs, 300);
    assert!(def.sip.digest_realm.is_none());
}

#[test]
fn digest_misconfigurations_name_the_key() {
    assert_error(
        "digest-no-realm",
        &digest_trunk("auth = \"digest\"\nusers = [{ name = \"a\", password = \"p\" }]\n"),
        "sip_trunk[0].auth",
        5,
        "[sip] digest_realm",
    );
    assert_error(
        "digest-no-users",
        &digest_trunk("auth = \"digest\"\nrealm = \"r\"\n"),
        "sip_trunk[0].auth",
        5,
        "at least one user",
    );
    assert_error(
        "digest-no-sources",
        "[[sip_trunk]]\nname = \"pbx\"\ntarget = \"sip:h\"\nauth = \"digest\"\nrealm = \"r\"\nusers = [{ name = \"a\", password = \"p\" }]\n",
        "sip_trunk[0].auth",
        4,
        "match_sources",
    );
    assert_error(
        "digest-unknown-mode",
        &digest_trunk("auth = \"basic\"\n"),
        "sip_trunk[0].auth",
        5,
        "unknown variant",
    );
    assert_error(
        "digest-users-without-auth",
        &digest_trunk("realm = \"r\"\n"),
        "sip_trunk[0].realm",
        5,
        "only used with auth = \"digest\"",
    );
    assert_error(
        "digest-user-two-secrets",
        &digest_trunk(
            "auth = \"digest\"\nrealm = \"r\"\nusers = [\n  { name = \"a\", password = \"p\", password_file = \"f\" },\n]\n",
        ),
        "sip_trunk[0].users[0].password_file",
        8,
        "not password and password_file",
    );
    assert_error(
        "digest-user-no-secret",
        &digest_trunk("auth = \"digest\"\nrealm = \"r\"\nusers = [\n  { name = \"a\" },\n]\n"),
        "sip_trunk[0].users[0]",
        8,
        "set password, password_file",
    );
    assert_error(
        "digest-bad-ha1",
        &digest_trunk(
            "auth = \"digest\"\nrealm = \"r\"\nusers = [\n  { name = \"a\", ha1_sha256 = \"abc\" },\n]\n",
        ),
        "sip_trunk[0].users[0].ha1_sha256",
        8,
        "64 hex digits",
    );
    assert_error(
        "digest-no-common-alg",
        &digest_trunk(&format!(
            "auth = \"digest\"\nrealm = \"r\"\nusers = [\n  {{ name = \"a\", ha1_md5 = \"{}\" }},\n  {{ name = \"b\", ha1_sha256 = \"{}\" }},\n]\n",
            "0".repeat(32),
            "0".repeat(64)
        )),
        "sip_trunk[0].users",
        7,
        "share no algorithm",
    );
    assert_error(
        "digest-dup-user",
        &digest_trunk(
            "auth = \"digest\"\nrealm = \"r\"\nusers = [\n  { name = \"a\", password = \"p\" },\n  { name = \"a\", password = \"q\" },\n]\n",
        ),
        "sip_trunk[0].users[1].name",
        9,
        "duplicate user",
    );
    assert_error(
        "digest-user-typo",
        &digest_trunk(
            "auth = \"digest\"\nrealm = \"r\"\nusers = [\n  { name = \"a\", pasword = \"p\" },\n]\n",
        ),
        "sip_trunk[0].users[0].pasword",
        8,
        "unknown field",
    );
    assert_error(
        "digest-username-no-password",
        &digest_trunk("username = \"riptide\"\n"),
        "sip_trunk[0].username",
        5,
        "set password or password_file",
    );
    assert_error(
        "digest-password-no-username",
        &digest_trunk("password = \"pw\"\n"),
        "sip_trunk[0].password",
        5,
        "set username",
    );
    assert_error(
        "digest-lockout-zero",
        "[sip]\ndigest_lockout_secs = 0\n",
        "sip.digest_lockout_secs",
        2,
        "at least 1",
    );
}

#[test]
fn trunk_client_certificate_keys_load_and_are_checked_where_written() {
    let fp = "ab".repeat(32);
    let colons = vec!["CD"; 32].join(":");
    let good = format!(
        "[sip]\ntls = [\"127.0.0.1:5061\"]\n[[sip_trunk]]\nname = \"c\"\ntarget = \"sip:h\"\n\
         match_sources = [\"192.0.2.1\"]\ntls_client_ca = \"ca.pem\"\n\
         tls_client_fingerprints = [\"{fp}\", \"{colons}\"]\n"
    );
    let (_, res) = load_text("mtls", &good);
    let cfg = res.expect("valid");
    let t = &cfg.sip_trunks[0];
    assert_eq!(t.tls_client_ca.as_deref(), Some(Path::new("ca.pem")));
    assert_eq!(t.tls_client_fingerprints, vec![fp.clone(), colons]);

    let short = good.replace(&fp, "abcd");
    assert_error(
        "mtls-fp",
        &short,
        "sip_trunk[0].tls_client_fingerprints[0]",
        8,
        "64 hex digits",
    );
    let no_sources = good.replace("match_sources = [\"192.0.2.1\"]\n", "");
    assert_error(
        "mtls-src",
        &no_sources,
        "sip_trunk[0].tls_client_fingerprints",
        7,
        "set match_sources too",
    );
    let no_listener = good.replace("tls = [\"127.0.0.1:5061\"]", "udp = [\"127.0.0.1:5060\"]");
    assert_error(
        "mtls-listener",
        &no_listener,
        "sip_trunk[0].tls_client_ca",
        7,
        "set [sip] tls",
    );
}

/// `[oauth]` with the external issuer's keys, as `jwks` and `introspection` need them.
const OAUTH_JWKS: &str = "[oauth]\nmode = \"jwks\"\nissuer = \"https://as.example\"\n\
    jwks_uri = \"https://as.example/jwks.json\"\nca_file = \"as-roots.pem\"\n";
const OAUTH_INTROSPECTION: &str = "[oauth]\nmode = \"introspection\"\n\
    issuer = \"https://as.example\"\nintrospection_endpoint = \"https://as.example/introspect\"\n\
    client_id = \"riptide\"\nclient_secret_file = \"secret\"\nca_file = \"as-roots.pem\"\n";

#[test]
fn oauth_defaults_to_the_local_issuer_and_loads_external_modes() {
    let def = embedded_default();
    assert_eq!(def.oauth.mode, riptide::config::OAuthMode::Local);
    assert_eq!(def.oauth.audience, "riptide");
    let (_, cfg) = load_text("oauth-jwks", OAUTH_JWKS);
    let cfg = cfg.unwrap();
    assert_eq!(cfg.oauth.mode, riptide::config::OAuthMode::Jwks);
    assert_eq!(
        cfg.oauth.jwks_uri.as_deref(),
        Some("https://as.example/jwks.json")
    );
    assert_eq!(cfg.oauth.audience, "riptide");
    let (_, cfg) = load_text(
        "oauth-introspection",
        &format!("{OAUTH_INTROSPECTION}audience = \"calls-api\"\nallow_hosts = [\"as.internal\", \"10.0.0.5\"]\n"),
    );
    let cfg = cfg.unwrap();
    assert_eq!(cfg.oauth.mode, riptide::config::OAuthMode::Introspection);
    assert_eq!(cfg.oauth.client_id.as_deref(), Some("riptide"));
    assert_eq!(cfg.oauth.audience, "calls-api");
    assert_eq!(cfg.oauth.allow_hosts, vec!["as.internal", "10.0.0.5"]);
}

#[test]
fn oauth_modes_need_their_keys() {
    assert_error(
        "oauth-no-uri",
        "[oauth]\nmode = \"jwks\"\nissuer = \"https://as.example\"\nca_file = \"r.pem\"\n",
        "oauth.jwks_uri",
        1,
        "mode = \"jwks\" needs jwks_uri",
    );
    assert_error(
        "oauth-no-issuer",
        "[oauth]\nmode = \"jwks\"\njwks_uri = \"https://as.example/jwks\"\n",
        "oauth.issuer",
        1,
        "needs the issuer",
    );
    assert_error(
        "oauth-no-ca",
        "[oauth]\nmode = \"jwks\"\nissuer = \"https://as.example\"\n\
         jwks_uri = \"https://as.example/jwks\"\n",
        "oauth.ca_file",
        1,
        "PEM roots",
    );
    assert_error(
        "oauth-no-secret",
        "[oauth]\nmode = \"introspection\"\nissuer = \"https://as.example\"\n\
         introspection_endpoint = \"https://as.example/introspect\"\nclient_id = \"gw\"\n\
         ca_file = \"r.pem\"\n",
        "oauth.client_secret_file",
        1,
        "never written in the configuration",
    );
    assert_error(
        "oauth-no-client",
        "[oauth]\nmode = \"introspection\"\nissuer = \"https://as.example\"\n\
         introspection_endpoint = \"https://as.example/introspect\"\n",
        "oauth.client_id",
        1,
        "client_id and client_secret_file",
    );
    assert_error(
        "oauth-bad-mode",
        "[oauth]\nmode = \"saml\"\n",
        "oauth.mode",
        2,
        "unknown variant",
    );
}

#[test]
fn oauth_urls_are_https_and_secrets_never_inline() {
    assert_error(
        "oauth-http-jwks",
        "[oauth]\nmode = \"jwks\"\nissuer = \"https://as.example\"\n\
         jwks_uri = \"http://as.example/jwks\"\nca_file = \"r.pem\"\n",
        "oauth.jwks_uri",
        4,
        "HTTPS only",
    );
    assert_error(
        "oauth-http-introspect",
        &OAUTH_INTROSPECTION.replace("https://as.example/introspect", "http://as.example/i"),
        "oauth.introspection_endpoint",
        4,
        "HTTPS only",
    );
    assert_error(
        "oauth-user-part",
        &OAUTH_JWKS.replace("https://as.example/jwks.json", "https://u:p@as.example/j"),
        "oauth.jwks_uri",
        4,
        "user part",
    );
    assert_error(
        "oauth-inline-secret",
        &format!("{OAUTH_INTROSPECTION}client_secret = \"hunter2\"\n"),
        "oauth.client_secret",
        8,
        "unknown field `client_secret`",
    );
    assert_error(
        "oauth-allow-host",
        &format!("{OAUTH_JWKS}allow_hosts = [\"https://as.internal/\"]\n"),
        "oauth.allow_hosts[0]",
        6,
        "not a host name",
    );
}

#[test]
fn oauth_keys_of_another_mode_are_refused() {
    assert_error(
        "oauth-local-uri",
        "[oauth]\njwks_uri = \"https://as.example/jwks\"\n",
        "oauth.jwks_uri",
        2,
        "mode is \"local\"",
    );
    assert_error(
        "oauth-local-aud",
        "[oauth]\naudience = \"calls-api\"\n",
        "oauth.audience",
        2,
        "local issuer",
    );
    assert_error(
        "oauth-jwks-client",
        &format!("{OAUTH_JWKS}client_id = \"gw\"\n"),
        "oauth.client_id",
        6,
        "not used with mode = \"jwks\"",
    );
    assert_error(
        "oauth-introspection-uri",
        &format!("{OAUTH_INTROSPECTION}jwks_uri = \"https://as.example/jwks\"\n"),
        "oauth.jwks_uri",
        8,
        "not used with mode = \"introspection\"",
    );
    // The "self" route calls our own server with a local-issuer token, refused in these modes.
    assert_error(
        "oauth-self-route",
        &format!("[[tg]]\nname = \"local\"\n\n[[sip_route]]\nript_peer = \"self\"\n\n{OAUTH_JWKS}"),
        "sip_route[0].ript_peer",
        5,
        "oauth.mode = \"jwks\" does not accept",
    );
}

/// A `[[sip_trunk]]` reached at `target`, followed by `extra` lines.
fn tls_trunk(target: &str, extra: &str) -> String {
    format!("[[sip_trunk]]\nname = \"carrier\"\ntarget = \"{target}\"\n{extra}")
}

#[test]
fn outgoing_tls_trunk_keys_load() {
    let text = tls_trunk(
        "sip:192.0.2.7:5061;transport=tls",
        "tls_ca = \"carrier-ca.pem\"\ntls_server_name = \"carrier.example\"\n\
         tls_client_cert = \"gw.pem\"\ntls_client_key = \"gw.key\"\n",
    );
    let (path, res) = load_text("tls-trunk-ok", &text);
    let cfg = res.unwrap();
    let t = &cfg.sip_trunks[0];
    let dir = path.parent().unwrap();
    assert_eq!(
        t.tls_ca.as_deref().map(|p| cfg.resolve_path(p)),
        Some(dir.join("carrier-ca.pem"))
    );
    assert_eq!(t.tls_server_name.as_deref(), Some("carrier.example"));
    assert_eq!(t.tls_client_cert.as_deref(), Some(Path::new("gw.pem")));
    assert_eq!(t.tls_client_key.as_deref(), Some(Path::new("gw.key")));
    // sips: means TLS too.
    let (_, res) = load_text(
        "tls-trunk-sips",
        &tls_trunk("sips:carrier.example", "tls_ca = \"ca.pem\"\n"),
    );
    assert!(res.is_ok(), "{res:?}");
}

#[test]
fn outgoing_tls_trunk_misconfigurations_name_the_key() {
    assert_error(
        "tls-trunk-no-ca",
        &tls_trunk("sip:carrier.example:5061;transport=tls", ""),
        "sip_trunk[0].tls_ca",
        1,
        "set tls_ca",
    );
    assert_error(
        "tls-trunk-proxy-no-ca",
        &tls_trunk(
            "sip:carrier.example",
            "outbound_proxy = \"sips:proxy.example\"\n",
        ),
        "sip_trunk[0].tls_ca",
        1,
        "outbound_proxy \"sips:proxy.example\" is reached over TLS",
    );
    assert_error(
        "tls-trunk-udp-ca",
        &tls_trunk("sip:carrier.example", "tls_ca = \"ca.pem\"\n"),
        "sip_trunk[0].tls_ca",
        4,
        "only used when the trunk is reached over TLS",
    );
    assert_error(
        "tls-trunk-cert-no-key",
        &tls_trunk(
            "sips:carrier.example",
            "tls_ca = \"ca.pem\"\ntls_client_cert = \"gw.pem\"\n",
        ),
        "sip_trunk[0].tls_client_cert",
        5,
        "set tls_client_key too",
    );
    assert_error(
        "tls-trunk-key-no-cert",
        &tls_trunk(
            "sips:carrier.example",
            "tls_ca = \"ca.pem\"\ntls_client_key = \"gw.key\"\n",
        ),
        "sip_trunk[0].tls_client_key",
        5,
        "set tls_client_cert too",
    );
    assert_error(
        "tls-trunk-ip-name",
        &tls_trunk(
            "sips:192.0.2.7",
            "tls_ca = \"ca.pem\"\ntls_server_name = \"192.0.2.7\"\n",
        ),
        "sip_trunk[0].tls_server_name",
        5,
        "not a DNS name",
    );
}
