//! Loading and validating configuration files.
//!
//! Every error names the file, the 1-based line and column, and the dotted key path
//! (`sip_trunk[0].target`). serde only gives a byte span, so the path is recovered by finding
//! that span in toml's spanned document tree; semantic checks go the other way, from a path to
//! the span of the offending key.

use super::{Config, StirVerifyMode};
use std::fmt;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A configuration problem, always naming where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML (before any key has a meaning).
    #[error("{file}:{line}:{column}: TOML syntax error: {message}")]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}:{line}:{column}: key `{key}`: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// The dotted key path for key errors; `None` for I/O and syntax errors.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    /// 1-based line of the error, when it has one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. } => Some(*line),
            ConfigError::Io { .. } => None,
        }
    }
}

impl Config {
    /// Resolves a path from the configuration: relative paths are relative to the directory of
    /// the configuration file, not to the process's working directory.
    pub fn resolve_path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

/// Reads, parses and validates a configuration file; `base_dir` becomes the file's directory.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: file.clone(),
        source,
    })?;
    let mut cfg = load_str(&text, &file)?;
    cfg.base_dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(cfg)
}

/// Parses and validates configuration text; `file_name` is only used in error messages.
/// `base_dir` of the result is empty (paths stay relative to the working directory).
pub fn load_str(text: &str, file_name: &str) -> Result<Config, ConfigError> {
    let doc = match DeTable::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            return Err(ConfigError::Syntax {
                file: file_name.into(),
                line,
                column,
                message: one_line(e.message()),
            });
        }
    };
    let locator = Locator {
        text,
        file: file_name,
        doc: doc.get_ref(),
    };
    let cfg: Config = toml::from_str(text).map_err(|e| locator.serde_error(&e))?;
    validate(&cfg, &locator)?;
    Ok(cfg)
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

struct KeyPath(Vec<Seg>);

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

/// Maps between byte spans and key paths of one parsed document.
struct Locator<'a> {
    text: &'a str,
    file: &'a str,
    doc: &'a DeTable<'a>,
}

impl Locator<'_> {
    fn serde_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let mut path = find_in_table(self.doc, span.start).unwrap_or_default();
        let mut message = one_line(e.message());
        // serde reports a missing field on the table that lacks it; name the key itself.
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|r| r.strip_suffix('`'))
        {
            path.push(key(field));
            message = format!("required key `{field}` is missing");
        } else if message.contains("socket address") {
            message.push_str(" (expected \"ip:port\", e.g. \"127.0.0.1:5060\")");
        } else if message.contains("IP address") {
            message.push_str(" (expected an IPv4 or IPv6 address, e.g. \"127.0.0.1\")");
        }
        let (line, column) = line_col(self.text, span.start);
        ConfigError::Invalid {
            file: self.file.into(),
            line,
            column,
            key: KeyPath(path).to_string(),
            message,
        }
    }

    /// An error at `path`, positioned at the deepest part of it that is written in the file
    /// (a value that came from a default has no position of its own).
    fn error(&self, path: &[Seg], message: impl Into<String>) -> ConfigError {
        let pos = span_of_nearest(self.doc, path).unwrap_or(0);
        let (line, column) = line_col(self.text, pos);
        ConfigError::Invalid {
            file: self.file.into(),
            line,
            column,
            key: KeyPath(path.to_vec()).to_string(),
            message: message.into(),
        }
    }
}

/// Deepest key path whose key or value span contains `pos`.
fn find_in_table(t: &DeTable<'_>, pos: usize) -> Option<Vec<Seg>> {
    for (k, v) in t.iter() {
        if let Some(mut sub) = find_in_value(v, pos) {
            sub.insert(0, key(k.get_ref()));
            return Some(sub);
        }
    }
    // A second pass so a deeper match anywhere wins over a shallow one that merely encloses it.
    for (k, v) in t.iter() {
        if k.span().contains(&pos) || v.span().contains(&pos) {
            return Some(vec![key(k.get_ref())]);
        }
    }
    None
}

fn find_in_value(v: &Spanned<DeValue<'_>>, pos: usize) -> Option<Vec<Seg>> {
    match v.get_ref() {
        DeValue::Table(t) => find_in_table(t, pos),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                if let Some(mut sub) = find_in_value(item, pos) {
                    sub.insert(0, Seg::Index(i));
                    return Some(sub);
                }
            }
            a.iter()
                .position(|item| item.span().contains(&pos))
                .map(|i| vec![Seg::Index(i)])
        }
        _ => None,
    }
}

/// Byte offset of the key (or array item) at `path`, if all of it is written in the file.
fn span_of(doc: &DeTable<'_>, path: &[Seg]) -> Option<usize> {
    let mut best = None;
    let mut table = Some(doc);
    let mut value: Option<&Spanned<DeValue<'_>>> = None;
    for seg in path {
        match seg {
            Seg::Key(k) => {
                let (ks, v) = table?.iter().find(|(name, _)| name.get_ref() == k)?;
                best = Some(ks.span().start);
                value = Some(v);
            }
            Seg::Index(i) => {
                let item = value?.get_ref().as_array()?.get(*i)?;
                best = Some(item.span().start);
                value = Some(item);
            }
        }
        table = value.and_then(|v| v.get_ref().as_table());
    }
    best
}

/// Like [`span_of`] but falls back to the deepest ancestor that is present.
fn span_of_nearest(doc: &DeTable<'_>, path: &[Seg]) -> Option<usize> {
    (1..=path.len())
        .rev()
        .find_map(|n| span_of(doc, &path[..n]))
}

/// 1-based line and column (in characters) of byte offset `pos`.
fn line_col(text: &str, pos: usize) -> (usize, usize) {
    let pos = pos.min(text.len());
    let before = text.get(..pos).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn one_line(msg: &str) -> String {
    msg.trim().lines().collect::<Vec<_>>().join("; ")
}

const KNOWN_CODECS: [&str; 6] = ["PCMU", "PCMA", "G722", "opus", "telephone-event", "CN"];

fn validate(cfg: &Config, loc: &Locator<'_>) -> Result<(), ConfigError> {
    let err = |path: Vec<Seg>, msg: String| loc.error(&path, msg);

    // general
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&cfg.general.log_level) {
        return Err(err(
            vec![key("general"), key("log_level")],
            format!(
                "not a tracing filter directive ({e}); expected e.g. \"info\" or \"riptide=debug\""
            ),
        ));
    }
    if cfg
        .general
        .worker_threads
        .is_some_and(|n| !(1..=1024).contains(&n))
    {
        return Err(err(
            vec![key("general"), key("worker_threads")],
            "must be between 1 and 1024 (leave it unset for one per core)".into(),
        ));
    }
    if cfg.general.node_name.trim().is_empty() {
        return Err(err(
            vec![key("general"), key("node_name")],
            "must not be empty".into(),
        ));
    }

    // sip
    let sip = &cfg.sip;
    if sip.udp.is_empty() && sip.tcp.is_empty() && sip.tls.is_empty() {
        return Err(err(
            vec![key("sip"), key("udp")],
            "no SIP listener: set at least one address in sip.udp, sip.tcp or sip.tls".into(),
        ));
    }
    if sip.tls_cert.is_some() != sip.tls_key.is_some() {
        let missing = if sip.tls_cert.is_some() {
            "tls_key"
        } else {
            "tls_cert"
        };
        let present = if sip.tls_cert.is_some() {
            "tls_cert"
        } else {
            "tls_key"
        };
        return Err(err(
            vec![key("sip"), key(present)],
            format!("set {missing} too (the certificate and its key go together)"),
        ));
    }
    if sip.max_calls == 0 {
        return Err(err(
            vec![key("sip"), key("max_calls")],
            "must be at least 1".into(),
        ));
    }
    if sip.t1_ms == 0 {
        return Err(err(
            vec![key("sip"), key("t1_ms")],
            "must be at least 1".into(),
        ));
    }
    {
        use crate::bridge::session_timer::{MAX_SE, MIN_SE_FLOOR};
        if !(MIN_SE_FLOOR..=MAX_SE).contains(&sip.min_se_secs) {
            return Err(err(
                vec![key("sip"), key("min_se_secs")],
                format!("must be from {MIN_SE_FLOOR} (RFC 4028's floor) to {MAX_SE} (a day)"),
            ));
        }
        let se = sip.session_expires_secs;
        if se != 0 && !(sip.min_se_secs..=MAX_SE).contains(&se) {
            return Err(err(
                vec![key("sip"), key("session_expires_secs")],
                format!(
                    "must be 0 (off) or from min_se_secs ({}) to {MAX_SE} (a day)",
                    sip.min_se_secs
                ),
            ));
        }
    }
    check_cors_list(&sip.cors_origins, "sip", &err)?;

    // http3
    if cfg.http3.server_name.trim().is_empty() {
        return Err(err(
            vec![key("http3"), key("server_name")],
            "must not be empty".into(),
        ));
    }
    if cfg.http3.cert_file.is_some() != cfg.http3.key_file.is_some() {
        let present = if cfg.http3.cert_file.is_some() {
            "cert_file"
        } else {
            "key_file"
        };
        return Err(err(
            vec![key("http3"), key(present)],
            "set both cert_file and key_file, or neither (to use a generated certificate)".into(),
        ));
    }
    if cfg.http3.max_calls == 0 {
        return Err(err(
            vec![key("http3"), key("max_calls")],
            "must be at least 1".into(),
        ));
    }
    check_cors_list(&cfg.http3.cors_origins, "http3", &err)?;
    if cfg.http3.cors_max_age_secs > MAX_CORS_MAX_AGE {
        return Err(err(
            vec![key("http3"), key("cors_max_age_secs")],
            format!(
                "at most {MAX_CORS_MAX_AGE} (browsers cap the preflight cache: Chromium at 7200 s, \
                 Firefox at 86400 s)"
            ),
        ));
    }

    // media
    let m = &cfg.media;
    if !(MIN_RCVBUF_KIB..=MAX_RCVBUF_KIB).contains(&m.socket_rcvbuf_kib) {
        return Err(err(
            vec![key("media"), key("socket_rcvbuf_kib")],
            format!(
                "between {MIN_RCVBUF_KIB} and {MAX_RCVBUF_KIB} (KiB asked per legacy media socket; \
                 the kernel doubles it)"
            ),
        ));
    }
    for (name, secs) in [
        ("timeout_secs", m.timeout_secs),
        ("hold_timeout_secs", m.hold_timeout_secs),
    ] {
        if secs > MAX_MEDIA_TIMEOUT {
            return Err(err(
                vec![key("media"), key(name)],
                format!("at most {MAX_MEDIA_TIMEOUT} (a day; 0 turns the timeout off)"),
            ));
        }
    }
    if m.port_min == 0 {
        return Err(err(
            vec![key("media"), key("port_min")],
            "must be at least 1".into(),
        ));
    }
    if m.port_min > m.port_max {
        return Err(err(
            vec![key("media"), key("port_min")],
            format!("port_min {} is above port_max {}", m.port_min, m.port_max),
        ));
    }
    if super::port_pairs(m.port_min, m.port_max) == 0 {
        return Err(err(
            vec![key("media"), key("port_max")],
            format!(
                "the port range {}-{} holds no even port with the next one after it (a call's \
                 RTP and RTCP)",
                m.port_min, m.port_max
            ),
        ));
    }

    // sip_trunk
    unique_names(
        cfg.sip_trunks.iter().map(|t| t.name.as_str()),
        "sip_trunk",
        &err,
    )?;
    for (i, t) in cfg.sip_trunks.iter().enumerate() {
        let at = |k: &str| vec![key("sip_trunk"), Seg::Index(i), key(k)];
        check_sip_uri(&t.target).map_err(|m| err(at("target"), m))?;
        if t.ping_secs != 0 && !(MIN_PING_SECS..=MAX_PING_SECS).contains(&t.ping_secs) {
            return Err(err(
                at("ping_secs"),
                format!("0 (no pings) or between {MIN_PING_SECS} and {MAX_PING_SECS} seconds"),
            ));
        }
        if let Some(p) = &t.outbound_proxy {
            check_sip_uri(p).map_err(|m| err(at("outbound_proxy"), m))?;
        }
        check_codecs(&t.codecs, at("codecs"), &err)?;
        for (j, src) in t.match_sources.iter().enumerate() {
            if parse_source(src).is_none() {
                let mut path = at("match_sources");
                path.push(Seg::Index(j));
                return Err(err(
                    path,
                    format!("{src:?} is neither an IP address nor IP:port"),
                ));
            }
        }
        for (j, fp) in t.tls_client_fingerprints.iter().enumerate() {
            if crate::tls::parse_sha256_fingerprint(fp).is_none() {
                let mut path = at("tls_client_fingerprints");
                path.push(Seg::Index(j));
                return Err(err(
                    path,
                    format!("{fp:?} is not a SHA-256 fingerprint: expected 64 hex digits (colons allowed)"),
                ));
            }
        }
        if !t.tls_client_fingerprints.is_empty() && t.match_sources.is_empty() {
            return Err(err(
                at("tls_client_fingerprints"),
                "requests are tied to a trunk by their source address: set match_sources too"
                    .into(),
            ));
        }
        let mtls_key = if t.tls_client_ca.is_some() {
            Some("tls_client_ca")
        } else if !t.tls_client_fingerprints.is_empty() {
            Some("tls_client_fingerprints")
        } else {
            None
        };
        if let (Some(k), true) = (mtls_key, sip.tls.is_empty()) {
            return Err(err(
                at(k),
                "client certificates are asked for on SIP-TLS: set [sip] tls to a listener address"
                    .into(),
            ));
        }
        check_trunk_tls(t, &at, &err)?;
    }
    check_digest(cfg, &err)?;

    // stir
    let st = &cfg.stir;
    let any = st.sign_cert.is_some() || st.sign_key.is_some() || st.x5u.is_some();
    if any {
        for (k, missing) in [
            ("sign_cert", st.sign_cert.is_none()),
            ("sign_key", st.sign_key.is_none()),
            ("x5u", st.x5u.is_none()),
        ] {
            if missing {
                return Err(err(
                    vec![key("stir"), key(k)],
                    "signing needs sign_cert, sign_key and x5u together".into(),
                ));
            }
        }
    }
    if let Some(u) = &st.x5u {
        let ok = u
            .strip_prefix("https://")
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/') && rest.contains('/'));
        if !ok {
            return Err(err(
                vec![key("stir"), key("x5u")],
                format!("{u:?} is not an https:// URL with a path (verifiers fetch it over HTTPS)"),
            ));
        }
    }
    if st.verify != StirVerifyMode::Off {
        for (k, missing) in [
            ("trust_anchors", st.trust_anchors.is_none()),
            ("x5u_ca", st.x5u_ca.is_none()),
        ] {
            if missing {
                return Err(err(
                    vec![key("stir"), key(k)],
                    "verify needs trust_anchors (STI-CA roots) and x5u_ca (roots of the x5u HTTPS servers)".into(),
                ));
            }
        }
    }
    if st.verify == StirVerifyMode::Off && !st.crls.is_empty() {
        return Err(err(
            vec![key("stir"), key("crls")],
            "CRLs are used by the verification service: set verify = \"continue\" or \"reject\""
                .into(),
        ));
    }
    if st.publish.is_some() && st.x5u.is_none() {
        return Err(err(
            vec![key("stir"), key("publish")],
            "publish serves sign_cert at x5u's path: set x5u (and sign_cert, sign_key)".into(),
        ));
    }

    // oauth
    check_oauth(cfg, &err)?;

    // tg
    unique_names(cfg.tgs.iter().map(|t| t.name.as_str()), "tg", &err)?;
    for (i, tg) in cfg.tgs.iter().enumerate() {
        if !tg
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        {
            return Err(err(
                vec![key("tg"), Seg::Index(i), key("name")],
                format!(
                    "{:?} cannot be a URL path segment; use letters, digits, '-', '.', '_' or '~'",
                    tg.name
                ),
            ));
        }
        for (j, r) in tg.routes.iter().enumerate() {
            let base = vec![key("tg"), Seg::Index(i), key("route"), Seg::Index(j)];
            match (&r.sip_trunk, r.echo) {
                (Some(_), true) => {
                    return Err(err(
                        [base.clone(), vec![key("echo")]].concat(),
                        "set either sip_trunk or echo = true, not both".into(),
                    ))
                }
                (None, false) => {
                    return Err(err(
                        base,
                        "route goes nowhere: set sip_trunk = \"NAME\" or echo = true".into(),
                    ))
                }
                (Some(name), false) if !cfg.sip_trunks.iter().any(|t| &t.name == name) => {
                    return Err(err(
                        [base, vec![key("sip_trunk")]].concat(),
                        format!(
                            "no [[sip_trunk]] named {name:?} (defined: {})",
                            list(cfg.sip_trunks.iter().map(|t| t.name.as_str()))
                        ),
                    ))
                }
                _ => {}
            }
        }
    }

    // ript_peer
    unique_names(
        cfg.ript_peers.iter().map(|p| p.name.as_str()),
        "ript_peer",
        &err,
    )?;
    for (i, p) in cfg.ript_peers.iter().enumerate() {
        let at = |k: &str| vec![key("ript_peer"), Seg::Index(i), key(k)];
        if p.name == "self" {
            return Err(err(
                at("name"),
                "\"self\" is reserved for this gateway".into(),
            ));
        }
        check_https_url(&p.url).map_err(|m| err(at("url"), m))?;
        if p.tg.is_empty() {
            return Err(err(at("tg"), "must name the peer's trunk group".into()));
        }
        match (&p.token, &p.token_file) {
            (Some(_), Some(_)) => {
                return Err(err(
                    at("token_file"),
                    "set token or token_file, not both".into(),
                ))
            }
            (None, None) => {
                return Err(err(
                    vec![key("ript_peer"), Seg::Index(i)],
                    "set token or token_file (the bearer token for this peer)".into(),
                ))
            }
            _ => {}
        }
        if p.ca_file.is_none() && p.pin_sha256.is_none() {
            return Err(err(
                vec![key("ript_peer"), Seg::Index(i)],
                "set ca_file or pin_sha256 (how the peer's certificate is trusted)".into(),
            ));
        }
        if let Some(pin) = &p.pin_sha256 {
            let hex: String = pin.chars().filter(|c| *c != ':').collect();
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err(
                    at("pin_sha256"),
                    "expected the SHA-256 of the peer's certificate as 64 hex digits".into(),
                ));
            }
        }
        check_codecs(&p.codecs, at("codecs"), &err)?;
    }

    // sip_route
    for (i, r) in cfg.sip_routes.iter().enumerate() {
        let base = vec![key("sip_route"), Seg::Index(i)];
        let at = [base.clone(), vec![key("ript_peer")]].concat();
        match (r.ript_peer.as_deref(), r.handlers.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(err(
                    [base, vec![key("handlers")]].concat(),
                    "set either ript_peer or handlers, not both".into(),
                ))
            }
            (None, None) => {
                return Err(err(
                    base,
                    "route goes nowhere: set ript_peer = \"NAME\" or handlers = \"TG\"".into(),
                ))
            }
            (None, Some(tg)) => {
                if !cfg.tgs.iter().any(|t| t.name == tg) {
                    return Err(err(
                        [base, vec![key("handlers")]].concat(),
                        format!(
                            "no [[tg]] named {tg:?} to ring the handlers of (defined: {})",
                            list(cfg.tgs.iter().map(|t| t.name.as_str()))
                        ),
                    ));
                }
            }
            (Some("self"), None) => {
                if cfg.tgs.is_empty() {
                    return Err(err(
                        at,
                        "\"self\" routes to this gateway's own trunk groups, but no [[tg]] is defined"
                            .into(),
                    ));
                }
            }
            (Some(peer), None) => {
                if !cfg.ript_peers.iter().any(|p| p.name == peer) {
                    return Err(err(
                        at,
                        format!(
                            "no [[ript_peer]] named {:?} (expected \"self\" or one of: {})",
                            peer,
                            list(cfg.ript_peers.iter().map(|p| p.name.as_str()))
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Bounds of a trunk's `ping_secs` (other than 0): more often than every 5 s is a load on the
/// peer that tells nothing more; an hour apart tells nothing useful.
const MIN_PING_SECS: u32 = 5;
const MAX_PING_SECS: u32 = 3600;

/// Bounds of `media.socket_rcvbuf_kib`: below 4 KiB a socket holds one or two packets on a
/// real NIC; above 4 MiB the kernel's own limit (net.core.rmem_max) decides anyway.
const MIN_RCVBUF_KIB: u32 = 4;
const MAX_RCVBUF_KIB: u32 = 4096;

/// Largest `media.timeout_secs` and `media.hold_timeout_secs`: a day (0 is "never").
const MAX_MEDIA_TIMEOUT: u64 = 86_400;

/// Largest `http3.cors_max_age_secs` (Firefox's cap; Chromium caps at 7200).
const MAX_CORS_MAX_AGE: u64 = 86_400;

/// Checks every entry of `{section}.cors_origins` and that none repeats.
fn check_cors_list(
    origins: &[String],
    section: &str,
    err: &dyn Fn(Vec<Seg>, String) -> ConfigError,
) -> Result<(), ConfigError> {
    for (i, o) in origins.iter().enumerate() {
        let at = vec![key(section), key("cors_origins"), Seg::Index(i)];
        check_cors_origin(o).map_err(|m| err(at.clone(), m))?;
        if let Some(j) = origins[..i].iter().position(|p| p == o) {
            return Err(err(
                at,
                format!("{o:?} is listed twice (already at cors_origins[{j}])"),
            ));
        }
    }
    Ok(())
}

/// An origin as it is written: scheme, host (IPv6 with its brackets) and the port when given.
struct OriginParts<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
}

/// Splits `scheme "://" host [":" port]` (RFC 6454 §6.2), refusing anything else: paths
/// (even a lone `/`), queries, fragments, user info, lists and white space.
fn split_origin(s: &str) -> Result<OriginParts<'_>, String> {
    let expected = "expected scheme://host[:port], e.g. \"https://app.example\"";
    let (scheme, authority) = s
        .split_once("://")
        .ok_or_else(|| format!("{s:?} is not an origin; {expected}"))?;
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok {
        return Err(format!("{s:?} has no valid scheme; {expected}"));
    }
    if authority.contains('@') {
        return Err(format!(
            "{s:?} has a user part; an origin is only scheme://host[:port]"
        ));
    }
    if authority.contains(['/', '?', '#']) {
        return Err(format!(
            "{s:?} has a path, query or fragment (a trailing \"/\" counts); an origin is only \
             scheme://host[:port]"
        ));
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority
            .find(']')
            .ok_or_else(|| format!("{s:?} has an unclosed IPv6 address; {expected}"))?;
        let (h, rest) = authority.split_at(end + 1);
        if h[1..h.len() - 1].parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{s:?} has an invalid IPv6 address; {expected}"));
        }
        match rest {
            "" => (h, None),
            r => match r.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return Err(format!("{s:?} is not an origin; {expected}")),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{s:?} has no host; {expected}"));
    }
    if !host.starts_with('[')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
    {
        return Err(format!(
            "{s:?} has an invalid host (letters, digits, '-', '.' and '_' only; write \
             internationalised names in their xn-- form); {expected}"
        ));
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.chars().all(|c| c.is_ascii_digit()) => Some(n),
            _ => return Err(format!("{s:?} has an invalid port; {expected}")),
        },
    };
    Ok(OriginParts { scheme, host, port })
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "https" | "wss" => Some(443),
        "http" | "ws" => Some(80),
        _ => None,
    }
}

/// The canonical form of a received `Origin` value: scheme and host in lower case, the scheme's
/// default port dropped. `None` when the value is not `scheme://host[:port]` (`null` included).
pub fn normalize_origin(s: &str) -> Option<String> {
    let o = split_origin(s.trim()).ok()?;
    let scheme = o.scheme.to_ascii_lowercase();
    let host = o.host.to_ascii_lowercase();
    Some(match o.port {
        Some(p) if default_port(&scheme) != Some(p) => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Checks one `cors_origins` entry: exactly the origin a browser sends (`https://host[:port]`,
/// or `http://` for a loopback host), lower case, no default port, no wildcard.
pub fn check_cors_origin(s: &str) -> Result<(), String> {
    if s == "*" {
        return Err(
            "\"*\" (any origin) is not allowed: riptide's API takes credentials \
             (Authorization: Bearer), and browsers refuse \"Access-Control-Allow-Origin: *\" on \
             credentialed requests; a wildcard would also let every web page drive the gateway \
             with a token it holds. List each origin, e.g. \"https://app.example\""
                .into(),
        );
    }
    if s.eq_ignore_ascii_case("null") {
        return Err(
            "\"null\" is not allowed: it is the origin of sandboxed frames, file: \
             pages and redirects, which any page can produce; list real origins instead"
                .into(),
        );
    }
    if s.contains('*') {
        return Err(format!(
            "{s:?}: wildcards are not supported; list each origin exactly, e.g. \
             \"https://app.example\""
        ));
    }
    let o = split_origin(s)?;
    if o.scheme != o.scheme.to_ascii_lowercase() || o.host != o.host.to_ascii_lowercase() {
        return Err(format!(
            "{s:?}: write the scheme and host in lower case, as browsers send them ({:?})",
            s.to_ascii_lowercase()
        ));
    }
    let loopback = matches!(o.host, "localhost" | "127.0.0.1" | "[::1]");
    match o.scheme {
        "https" => {}
        "http" if loopback => {}
        "http" => {
            return Err(format!(
                "{s:?}: http:// is only accepted for localhost, 127.0.0.1 and [::1]; use https://"
            ))
        }
        other => {
            return Err(format!(
                "{s:?}: scheme {other:?} is not a web origin here; use https:// (or http:// \
                 for a loopback host)"
            ))
        }
    }
    if let Some(p) = o.port {
        if default_port(o.scheme) == Some(p) {
            return Err(format!(
                "{s:?}: drop \":{p}\", the default port; browsers send the origin without it, \
                 so this entry would never match"
            ));
        }
    }
    Ok(())
}

fn list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = names.map(|n| format!("{n:?}")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Outgoing SIP-TLS keys of one `[[sip_trunk]]`: a trunk reached over TLS (`outbound_proxy`,
/// else `target`, is `sips:` or has `;transport=tls`) needs `tls_ca`; the other TLS keys are
/// refused on trunks reached otherwise; the client certificate and key go together.
fn check_trunk_tls(
    t: &super::SipTrunkConfig,
    at: &dyn Fn(&str) -> Vec<Seg>,
    err: &dyn Fn(Vec<Seg>, String) -> ConfigError,
) -> Result<(), ConfigError> {
    use crate::sip::msg::{uri_target, Transport};
    let (uri_key, uri) = match &t.outbound_proxy {
        Some(p) => ("outbound_proxy", p.as_str()),
        None => ("target", t.target.as_str()),
    };
    let tls = uri_target(uri).is_some_and(|(_, _, tr)| tr == Transport::Tls);
    if !tls {
        let set = [
            ("tls_ca", t.tls_ca.is_some()),
            ("tls_server_name", t.tls_server_name.is_some()),
            ("tls_client_cert", t.tls_client_cert.is_some()),
            ("tls_client_key", t.tls_client_key.is_some()),
        ];
        if let Some((k, _)) = set.iter().find(|(_, s)| *s) {
            return Err(err(
                at(k),
                format!(
                    "only used when the trunk is reached over TLS, and {uri_key} {uri:?} is not \
                     (write sips: or ;transport=tls)"
                ),
            ));
        }
        return Ok(());
    }
    if t.tls_ca.is_none() {
        return Err(err(
            at("tls_ca"),
            format!(
                "{uri_key} {uri:?} is reached over TLS: set tls_ca to the PEM roots the trunk's \
                 certificate must chain to (there is no unverified TLS)"
            ),
        ));
    }
    if let Some(n) = &t.tls_server_name {
        let dns = matches!(
            rustls::pki_types::ServerName::try_from(n.as_str()),
            Ok(rustls::pki_types::ServerName::DnsName(_))
        );
        if !dns {
            return Err(err(
                at("tls_server_name"),
                format!("{n:?} is not a DNS name (the SIP domain the certificate must identify)"),
            ));
        }
    }
    match (&t.tls_client_cert, &t.tls_client_key) {
        (Some(_), None) => Err(err(
            at("tls_client_cert"),
            "set tls_client_key too (the certificate and its key go together)".into(),
        )),
        (None, Some(_)) => Err(err(
            at("tls_client_key"),
            "set tls_client_cert too (the certificate and its key go together)".into(),
        )),
        _ => Ok(()),
    }
}

/// SIP Digest keys: `[sip] digest_realm` and `digest_lockout_secs`; per `[[sip_trunk]]`,
/// `auth`, `realm` and `users` (challenging calls in) and `username` with `password` or
/// `password_file` (answering challenges to our calls).
fn check_digest(
    cfg: &Config,
    err: &dyn Fn(Vec<Seg>, String) -> ConfigError,
) -> Result<(), ConfigError> {
    use super::SipTrunkAuth;
    let text_ok = |v: &str| !v.trim().is_empty() && !v.chars().any(char::is_control);
    if let Some(r) = &cfg.sip.digest_realm {
        if !text_ok(r) {
            return Err(err(
                vec![key("sip"), key("digest_realm")],
                "must not be empty or hold control characters".into(),
            ));
        }
    }
    if cfg.sip.digest_lockout_secs == 0 {
        return Err(err(
            vec![key("sip"), key("digest_lockout_secs")],
            "must be at least 1: users are locked out after 10 wrong Digest responses".into(),
        ));
    }
    for (i, t) in cfg.sip_trunks.iter().enumerate() {
        let at = |k: &str| vec![key("sip_trunk"), Seg::Index(i), key(k)];
        if let Some(r) = &t.realm {
            if !text_ok(r) {
                return Err(err(
                    at("realm"),
                    "must not be empty or hold control characters".into(),
                ));
            }
        }
        if t.auth == SipTrunkAuth::None {
            let set = [("realm", t.realm.is_some()), ("users", !t.users.is_empty())];
            if let Some((k, _)) = set.iter().find(|(_, s)| *s) {
                return Err(err(
                    at(k),
                    "only used with auth = \"digest\" (challenging the INVITEs this trunk sends)"
                        .into(),
                ));
            }
        } else {
            if t.realm.is_none() && cfg.sip.digest_realm.is_none() {
                return Err(err(
                    at("auth"),
                    "auth = \"digest\" needs a realm: set realm here or [sip] digest_realm".into(),
                ));
            }
            if t.match_sources.is_empty() {
                return Err(err(
                    at("auth"),
                    "INVITEs are tied to a trunk by their source address: set match_sources too"
                        .into(),
                ));
            }
            if t.users.is_empty() {
                return Err(err(
                    at("auth"),
                    "auth = \"digest\" needs at least one user, e.g. users = [{ name = \"pbx\", \
                     password_file = \"pbx.pass\" }]"
                        .into(),
                ));
            }
            // Algorithms every user can be checked with: all for a password, else its HA1s.
            let mut common = [true; 3];
            for (j, u) in t.users.iter().enumerate() {
                let uat = |k: &str| {
                    let mut p = at("users");
                    p.push(Seg::Index(j));
                    p.push(key(k));
                    p
                };
                if !text_ok(&u.name) {
                    return Err(err(
                        uat("name"),
                        "must not be empty or hold control characters".into(),
                    ));
                }
                if let Some(k) = t.users[..j].iter().position(|o| o.name == u.name) {
                    return Err(err(
                        uat("name"),
                        format!("duplicate user {:?} (already users[{k}])", u.name),
                    ));
                }
                let ha1s = [
                    ("ha1_sha512_256", &u.ha1_sha512_256, 64),
                    ("ha1_sha256", &u.ha1_sha256, 64),
                    ("ha1_md5", &u.ha1_md5, 32),
                ];
                let kinds: Vec<&str> = [
                    ("password", u.password.is_some()),
                    ("password_file", u.password_file.is_some()),
                    ("ha1_*", ha1s.iter().any(|(_, v, _)| v.is_some())),
                ]
                .iter()
                .filter(|(_, set)| *set)
                .map(|(k, _)| *k)
                .collect();
                match kinds.as_slice() {
                    [] => {
                        return Err(err(
                            {
                                let mut p = at("users");
                                p.push(Seg::Index(j));
                                p
                            },
                            "set password, password_file, or ha1_sha512_256/ha1_sha256/ha1_md5 \
                             for this user"
                                .into(),
                        ))
                    }
                    [_] => {}
                    [first, second, ..] => {
                        let second = if *second == "ha1_*" {
                            ha1s.iter()
                                .find(|(_, v, _)| v.is_some())
                                .map_or("ha1_md5", |(k, _, _)| *k)
                        } else {
                            second
                        };
                        return Err(err(
                            uat(second),
                            format!("set one of password, password_file or the ha1_* keys, not {first} and {second}"),
                        ));
                    }
                }
                if kinds == ["ha1_*"] {
                    for (n, (k, v, len)) in ha1s.iter().enumerate() {
                        match v {
                            Some(h) => {
                                let h = h.0.trim();
                                if h.len() != *len || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                                    return Err(err(
                                        uat(k),
                                        format!(
                                            "expected {len} hex digits (H(name:realm:password))"
                                        ),
                                    ));
                                }
                            }
                            None => common[n] = false,
                        }
                    }
                }
            }
            if !common.iter().any(|c| *c) {
                return Err(err(
                    at("users"),
                    "the users' ha1_* keys share no algorithm, so no challenge suits them all: \
                     give every user an HA1 for one same algorithm (or a password)"
                        .into(),
                ));
            }
        }
        match (&t.username, &t.password, &t.password_file) {
            (Some(u), _, _) if !text_ok(u) => {
                return Err(err(
                    at("username"),
                    "must not be empty or hold control characters".into(),
                ))
            }
            (Some(_), Some(_), Some(_)) => {
                return Err(err(
                    at("password_file"),
                    "set password or password_file, not both".into(),
                ))
            }
            (Some(_), None, None) => {
                return Err(err(
                    at("username"),
                    "set password or password_file too (our Digest login toward this trunk)".into(),
                ))
            }
            (None, Some(_), _) => {
                return Err(err(
                    at("password"),
                    "set username too (our Digest login toward this trunk)".into(),
                ))
            }
            (None, None, Some(_)) => {
                return Err(err(
                    at("password_file"),
                    "set username too (our Digest login toward this trunk)".into(),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// `[oauth]`: the keys each mode needs, none it does not use, https URLs only.
fn check_oauth(
    cfg: &Config,
    err: &dyn Fn(Vec<Seg>, String) -> ConfigError,
) -> Result<(), ConfigError> {
    use super::OAuthMode;
    let oa = &cfg.oauth;
    let at = |k: &str| vec![key("oauth"), key(k)];
    let mode = oa.mode.as_str();
    if oa.audience.trim().is_empty() {
        return Err(err(at("audience"), "must not be empty".into()));
    }
    let jwks_only = [("jwks_uri", oa.jwks_uri.is_some())];
    let introspection_only = [
        (
            "introspection_endpoint",
            oa.introspection_endpoint.is_some(),
        ),
        ("client_id", oa.client_id.is_some()),
        ("client_secret_file", oa.client_secret_file.is_some()),
    ];
    if oa.mode == OAuthMode::Local {
        let external = [
            ("issuer", oa.issuer.is_some()),
            ("ca_file", oa.ca_file.is_some()),
            ("allow_hosts", !oa.allow_hosts.is_empty()),
        ];
        for (k, set) in external.iter().chain(&jwks_only).chain(&introspection_only) {
            if *set {
                return Err(err(
                    at(k),
                    "only used with mode = \"jwks\" or \"introspection\"; mode is \"local\" \
                     (the built-in issuer)"
                        .into(),
                ));
            }
        }
        if oa.audience != crate::auth::LOCAL_AUDIENCE {
            return Err(err(
                at("audience"),
                format!(
                    "the local issuer's tokens always name audience {:?}; another audience needs \
                     mode = \"jwks\" or \"introspection\"",
                    crate::auth::LOCAL_AUDIENCE
                ),
            ));
        }
        return Ok(());
    }
    match &oa.issuer {
        None => {
            return Err(err(
                at("issuer"),
                format!("mode = \"{mode}\" needs the issuer (the `iss` its tokens carry)"),
            ))
        }
        Some(i) if i.trim().is_empty() => {
            return Err(err(at("issuer"), "must not be empty".into()))
        }
        Some(_) => {}
    }
    let (needed, unused): (&str, &[(&str, bool)]) = match oa.mode {
        OAuthMode::Jwks => ("jwks_uri", &introspection_only),
        _ => ("introspection_endpoint", &jwks_only),
    };
    for (k, set) in unused {
        if *set {
            return Err(err(at(k), format!("not used with mode = \"{mode}\"")));
        }
    }
    let url = match oa.mode {
        OAuthMode::Jwks => &oa.jwks_uri,
        _ => &oa.introspection_endpoint,
    };
    match url {
        None => {
            return Err(err(
                at(needed),
                format!("mode = \"{mode}\" needs {needed} (an https:// URL at the issuer)"),
            ))
        }
        Some(u) => check_fetch_url(u).map_err(|m| err(at(needed), m))?,
    }
    if oa.mode == OAuthMode::Introspection {
        match &oa.client_id {
            None => {
                return Err(err(
                    at("client_id"),
                    "mode = \"introspection\" needs client_id and client_secret_file (how riptide \
                     authenticates to the introspection endpoint)"
                        .into(),
                ))
            }
            Some(c) if c.is_empty() || c.contains(':') => {
                return Err(err(
                    at("client_id"),
                    "must be non-empty and without ':' (it goes into HTTP Basic)".into(),
                ))
            }
            Some(_) => {}
        }
        if oa.client_secret_file.is_none() {
            return Err(err(
                at("client_secret_file"),
                "mode = \"introspection\" needs client_secret_file (the secret is read from a \
                 file, never written in the configuration)"
                    .into(),
            ));
        }
    }
    if oa.ca_file.is_none() {
        return Err(err(
            at("ca_file"),
            format!(
                "mode = \"{mode}\" needs ca_file: the PEM roots the issuer's HTTPS certificate \
                 chains to (e.g. \"/etc/ssl/certs/ca-certificates.crt\")"
            ),
        ));
    }
    for (i, h) in oa.allow_hosts.iter().enumerate() {
        let bare = h
            .strip_prefix('[')
            .and_then(|v| v.strip_suffix(']'))
            .unwrap_or(h);
        let ok = !bare.is_empty()
            && (bare.parse::<std::net::IpAddr>().is_ok()
                || bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)));
        if !ok {
            return Err(err(
                vec![key("oauth"), key("allow_hosts"), Seg::Index(i)],
                format!("{h:?} is not a host name or IP address (no scheme, port or path)"),
            ));
        }
    }
    for (i, r) in cfg.sip_routes.iter().enumerate() {
        if r.ript_peer.as_deref() == Some("self") {
            return Err(err(
                vec![key("sip_route"), Seg::Index(i), key("ript_peer")],
                format!(
                    "\"self\" calls this gateway's HTTP/3 server with a token of the local \
                     issuer, which oauth.mode = \"{mode}\" does not accept; route to a \
                     [[ript_peer]] instead"
                ),
            ));
        }
    }
    Ok(())
}

/// A URL riptide fetches from (`[oauth]`): https, a host, no user part or fragment.
fn check_fetch_url(s: &str) -> Result<(), String> {
    let expected = "expected an https:// URL, e.g. \"https://issuer.example/jwks.json\"";
    let uri: http::Uri = s
        .parse()
        .map_err(|e| format!("{s:?} is not a URL ({e}); {expected}"))?;
    match uri.scheme_str() {
        Some(sch) if sch.eq_ignore_ascii_case("https") => {}
        Some(sch) => {
            return Err(format!(
                "{s:?}: scheme {sch} is not allowed, riptide fetches over HTTPS only; {expected}"
            ))
        }
        None => return Err(format!("{s:?} is not an absolute URL; {expected}")),
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    if authority.contains('@') {
        return Err(format!("{s:?} has a user part; {expected}"));
    }
    if uri.host().is_none_or(|h| h.is_empty()) {
        return Err(format!("{s:?} has no host; {expected}"));
    }
    if s.contains('#') {
        return Err(format!("{s:?} has a fragment; {expected}"));
    }
    Ok(())
}

fn unique_names<'a>(
    names: impl Iterator<Item = &'a str>,
    table: &str,
    err: &dyn Fn(Vec<Seg>, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let mut seen: Vec<&str> = Vec::new();
    for (i, n) in names.enumerate() {
        let at = vec![key(table), Seg::Index(i), key("name")];
        if n.is_empty() {
            return Err(err(at, "must not be empty".into()));
        }
        if let Some(j) = seen.iter().position(|s| *s == n) {
            return Err(err(
                at,
                format!("duplicate name {n:?} (already used by {table}[{j}])"),
            ));
        }
        seen.push(n);
    }
    Ok(())
}

/// A `match_sources` entry: an address, with the port when one is given.
pub fn parse_source(s: &str) -> Option<(std::net::IpAddr, Option<u16>)> {
    let s = s.trim();
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Some((a.ip(), Some(a.port())));
    }
    s.parse::<std::net::IpAddr>().ok().map(|ip| (ip, None))
}

fn check_codecs(
    codecs: &[String],
    at: Vec<Seg>,
    err: &dyn Fn(Vec<Seg>, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if codecs.is_empty() {
        return Err(err(at, "list at least one codec".into()));
    }
    for (j, c) in codecs.iter().enumerate() {
        if !KNOWN_CODECS.iter().any(|k| k.eq_ignore_ascii_case(c)) {
            return Err(err(
                [at.clone(), vec![Seg::Index(j)]].concat(),
                format!(
                    "unknown codec {c:?}; expected one of {}",
                    KNOWN_CODECS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn check_sip_uri(s: &str) -> Result<(), String> {
    use rsipstack::sip::uri::Scheme;
    let uri = rsipstack::sip::parse_uri(s).map_err(|e| {
        format!("{s:?} is not a SIP URI ({e}); expected e.g. \"sip:127.0.0.1:5080\"")
    })?;
    match uri.scheme {
        Some(Scheme::Sip) | Some(Scheme::Sips) => {}
        _ => {
            return Err(format!(
                "{s:?} is not a sip: or sips: URI; expected e.g. \"sip:127.0.0.1:5080\""
            ))
        }
    }
    if uri.host_with_port.to_string().trim().is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    Ok(())
}

fn check_https_url(s: &str) -> Result<(), String> {
    let expected = "expected \"https://host:port\", e.g. \"https://127.0.0.1:4434\"";
    let rest = s
        .strip_prefix("https://")
        .ok_or_else(|| format!("{s:?} is not an https URL; {expected}"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') || authority.contains('?') || authority.contains('@') {
        return Err(format!("{s:?} has a path, query or user part; {expected}"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6
            .split_once("]:")
            .ok_or_else(|| format!("{s:?} has no port; {expected}"))?;
        (h, p)
    } else {
        authority
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} has no port; {expected}"))?
    };
    if host.is_empty() {
        return Err(format!("{s:?} has no host; {expected}"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{s:?} has an invalid port; {expected}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(text: &str) -> (String, usize, usize, String) {
        match load_str(text, "t.toml") {
            Err(ConfigError::Invalid {
                key,
                line,
                column,
                message,
                ..
            }) => (key, line, column, message),
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    #[test]
    fn empty_text_is_the_default_config() {
        let mut cfg = load_str("", "t.toml").unwrap();
        cfg.base_dir = PathBuf::from(".");
        // Empty text has no [[tg]] and no routes; the scalar sections are the defaults.
        let def = super::super::embedded_default();
        assert_eq!(cfg.sip, def.sip);
        assert_eq!(cfg.media, def.media);
        assert!(cfg.tgs.is_empty());
    }

    #[test]
    fn unknown_key_in_section() {
        let (key, line, col, msg) = invalid("[sip]\nudp = []\nudpp = [\"127.0.0.1:5060\"]\n");
        assert_eq!((key.as_str(), line, col), ("sip.udpp", 3, 1));
        assert!(msg.contains("unknown field `udpp`"), "{msg}");
    }

    #[test]
    fn sip_routes_go_to_a_peer_or_to_our_handlers() {
        let tg = "[[tg]]\nname = \"web\"\n\n";
        let (key, _, _, msg) = invalid(&format!("{tg}[[sip_route]]\nprefix = \"p\"\n"));
        assert_eq!(key, "sip_route[0]");
        assert!(msg.contains("goes nowhere"), "{msg}");
        let (key, line, _, msg) = invalid(&format!(
            "{tg}[[sip_route]]\nhandlers = \"web\"\nript_peer = \"self\"\n"
        ));
        assert_eq!((key.as_str(), line), ("sip_route[0].handlers", 5));
        assert!(msg.contains("not both"), "{msg}");
        let (key, _, _, msg) = invalid(&format!("{tg}[[sip_route]]\nhandlers = \"webb\"\n"));
        assert_eq!(key, "sip_route[0].handlers");
        assert!(msg.contains("no [[tg]] named \"webb\""), "{msg}");
        let ok = load_str(
            &format!("{tg}[[sip_route]]\nhandlers = \"web\"\n"),
            "t.toml",
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn wrong_type_in_array_item() {
        let (key, line, _, msg) = invalid("[sip]\nudp = [\"127.0.0.1:5060\", \"nope\"]\n");
        assert_eq!((key.as_str(), line), ("sip.udp[1]", 2));
        assert!(msg.contains("ip:port"), "{msg}");
        let (key, line, _, msg) = invalid("[media]\nport_min = \"x\"\n");
        assert_eq!((key.as_str(), line), ("media.port_min", 2));
        assert!(msg.contains("expected"), "{msg}");
    }

    #[test]
    fn missing_required_key_in_array_of_tables() {
        let (key, line, _, msg) = invalid(
            "[[sip_trunk]]\nname = \"a\"\ntarget = \"sip:a\"\n\n[[sip_trunk]]\nname = \"b\"\n",
        );
        assert_eq!(key, "sip_trunk[1].target");
        assert_eq!(line, 5, "{msg}");
        assert!(msg.contains("`target` is missing"), "{msg}");
    }

    #[test]
    fn syntax_error_has_position() {
        match load_str("[sip]\nudp = [\n", "t.toml") {
            Err(ConfigError::Syntax { line, .. }) => assert!(line >= 2),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn semantic_errors_point_at_the_key() {
        let (key, line, _, msg) = invalid("[[sip_route]]\nprefix = \"\"\nript_peer = \"nobody\"\n");
        assert_eq!((key.as_str(), line), ("sip_route[0].ript_peer", 3));
        assert!(msg.contains("no [[ript_peer]] named \"nobody\""), "{msg}");

        let (key, line, _, _) = invalid("[media]\nport_min = 100\nport_max = 100\n");
        assert_eq!((key.as_str(), line), ("media.port_max", 3));
        // Two ports, but the even one has no port after it for RTCP.
        let (key, _, _, msg) = invalid("[media]\nport_min = 101\nport_max = 102\n");
        assert_eq!(key, "media.port_max");
        assert!(msg.contains("101-102 holds no even port"), "{msg}");
        let (key, _, _, _) = invalid("[media]\nport_min = 200\nport_max = 100\n");
        assert_eq!(key, "media.port_min");

        let (key, line, _, msg) = invalid("[sip]\nudp = []\ntcp = []\n");
        assert_eq!((key.as_str(), line), ("sip.udp", 2));
        assert!(msg.contains("no SIP listener"), "{msg}");
    }

    #[test]
    fn tg_routes_need_exactly_one_target() {
        let base = "[[tg]]\nname = \"t\"\n[[tg.route]]\nprefix = \"\"\n";
        let (key, line, _, msg) = invalid(base);
        assert_eq!((key.as_str(), line), ("tg[0].route[0]", 3));
        assert!(msg.contains("goes nowhere"), "{msg}");
        let (key, _, _, _) = invalid(&format!("{base}echo = true\nsip_trunk = \"x\"\n"));
        assert_eq!(key, "tg[0].route[0].echo");
        let (key, line, _, msg) = invalid(&format!("{base}sip_trunk = \"x\"\n"));
        assert_eq!((key.as_str(), line), ("tg[0].route[0].sip_trunk", 5));
        assert!(msg.contains("no [[sip_trunk]] named \"x\""), "{msg}");
    }

    #[test]
    fn ript_peer_checks() {
        let peer = |extra: &str| {
            format!("[[ript_peer]]\nname = \"b\"\nurl = \"https://h:1\"\ntg = \"t\"\nca_file = \"c\"\n{extra}")
        };
        let (key, _, _, msg) = invalid(&peer(""));
        assert_eq!(key, "ript_peer[0]");
        assert!(msg.contains("token"), "{msg}");
        let (key, line, _, _) = invalid(&peer("token = \"x\"\ntoken_file = \"f\"\n"));
        assert_eq!((key.as_str(), line), ("ript_peer[0].token_file", 7));
        let bad_url = peer("token = \"x\"\n").replace("https://h:1", "http://h:1");
        let (key, line, _, msg) = invalid(&bad_url);
        assert_eq!((key.as_str(), line), ("ript_peer[0].url", 3));
        assert!(msg.contains("https://host:port"), "{msg}");
        let (key, _, _, msg) = invalid(&peer("token = \"x\"\ncodecs = [\"PCMU\", \"gsm\"]\n"));
        assert_eq!(key, "ript_peer[0].codecs[1]");
        assert!(msg.contains("unknown codec \"gsm\""), "{msg}");
        assert!(load_str(&peer("token = \"x\"\ncodecs = [\"pcmu\", \"OPUS\"]\n"), "t").is_ok());
    }

    #[test]
    fn duplicate_names_and_bad_uris() {
        let t = "[[sip_trunk]]\nname = \"a\"\ntarget = \"sip:x\"\n[[sip_trunk]]\nname = \"a\"\ntarget = \"sip:y\"\n";
        let (key, line, _, msg) = invalid(t);
        assert_eq!((key.as_str(), line), ("sip_trunk[1].name", 5));
        assert!(msg.contains("duplicate"), "{msg}");
        let (key, line, _, _) = invalid("[[sip_trunk]]\nname = \"a\"\ntarget = \"http://x\"\n");
        assert_eq!((key.as_str(), line), ("sip_trunk[0].target", 3));
    }

    #[test]
    fn https_url_forms() {
        assert!(check_https_url("https://127.0.0.1:4434").is_ok());
        assert!(check_https_url("https://[::1]:4434/").is_ok());
        assert!(check_https_url("https://h").is_err());
        assert!(check_https_url("https://h:0").is_err());
        assert!(check_https_url("https://h:1/path").is_err());
        assert!(check_https_url("https://:1").is_err());
    }

    #[test]
    fn cors_origin_forms() {
        for ok in [
            "https://allowed.example",
            "https://allowed.example:8443",
            "https://10.0.0.1",
            "https://[2001:db8::1]:4443",
            "http://localhost:3000",
            "http://127.0.0.1",
            "http://[::1]:8080",
        ] {
            assert_eq!(check_cors_origin(ok), Ok(()), "{ok}");
        }
        for (bad, needle) in [
            ("*", "Authorization"),
            ("null", "sandboxed"),
            ("https://*.example", "wildcards"),
            ("allowed.example", "not an origin"),
            ("https://allowed.example/", "path"),
            ("https://allowed.example/app", "path"),
            ("https://allowed.example?x", "query"),
            ("https://user@allowed.example", "user part"),
            ("https://Allowed.example", "lower case"),
            ("HTTPS://allowed.example", "lower case"),
            ("http://allowed.example", "only accepted for localhost"),
            ("ftp://allowed.example", "scheme"),
            ("https://allowed.example:443", "default port"),
            ("http://localhost:80", "default port"),
            ("https://allowed.example:0", "port"),
            ("https://allowed.example:", "port"),
            ("https://allowed.example:+1", "port"),
            ("https://", "no host"),
            ("https://a b", "host"),
            ("https://a.example, https://b.example", "host"),
            ("https://[::1", "IPv6"),
        ] {
            let e = check_cors_origin(bad).expect_err(bad);
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn received_origins_are_normalised() {
        assert_eq!(
            normalize_origin("HTTPS://Allowed.Example:443").as_deref(),
            Some("https://allowed.example")
        );
        assert_eq!(
            normalize_origin("http://localhost:80").as_deref(),
            Some("http://localhost")
        );
        assert_eq!(
            normalize_origin("https://a.example:8443").as_deref(),
            Some("https://a.example:8443")
        );
        for bad in [
            "null",
            "",
            "https://a.example/",
            "a.example",
            "https://a, https://b",
        ] {
            assert_eq!(normalize_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn session_timer_keys_keep_to_rfc_4028s_floor_and_a_day() {
        let (key, line, _, msg) = invalid("[sip]\nmin_se_secs = 30\n");
        assert_eq!((key.as_str(), line), ("sip.min_se_secs", 2));
        assert!(msg.contains("90"), "{msg}");
        let (key, _, _, msg) = invalid("[sip]\nmin_se_secs = 600\nsession_expires_secs = 300\n");
        assert_eq!(key, "sip.session_expires_secs");
        assert!(msg.contains("min_se_secs (600)"), "{msg}");
        let (key, _, _, _) = invalid("[sip]\nsession_expires_secs = 100000\n");
        assert_eq!(key, "sip.session_expires_secs");
        let (key, _, _, _) = invalid("[sip]\nsession_expires_secs = -1\n");
        assert_eq!(key, "sip.session_expires_secs");
        let off = load_str("[sip]\nsession_expires_secs = 0\n", "t.toml").unwrap();
        assert_eq!(off.sip.session_expires_secs, 0);
    }

    #[test]
    fn cors_keys_are_checked_where_they_are_written() {
        let (key, line, _, msg) =
            invalid("[http3]\ncors_origins = [\"https://ok.example\", \"*\"]\n");
        assert_eq!((key.as_str(), line), ("http3.cors_origins[1]", 2));
        assert!(msg.contains("Authorization"), "{msg}");
        let (key, line, _, msg) =
            invalid("[sip]\ncors_origins = [\n  \"https://a.example/\",\n]\n");
        assert_eq!((key.as_str(), line), ("sip.cors_origins[0]", 3));
        assert!(msg.contains("path"), "{msg}");
        let (key, _, _, msg) =
            invalid("[sip]\ncors_origins = [\"https://a.example\", \"https://a.example\"]\n");
        assert_eq!(key, "sip.cors_origins[1]");
        assert!(msg.contains("twice"), "{msg}");
        let (key, line, _, _) = invalid("[http3]\ncors_max_age_secs = 86401\n");
        assert_eq!((key.as_str(), line), ("http3.cors_max_age_secs", 2));
        let (key, line, _, msg) =
            invalid("[media]\ntimeout_secs = 60\nhold_timeout_secs = 9223372036854775807\n");
        assert_eq!((key.as_str(), line), ("media.hold_timeout_secs", 3));
        assert!(msg.contains("at most 86400"), "{msg}");
        for bad in ["2", "5000"] {
            let (key, line, _, msg) = invalid(&format!("[media]\nsocket_rcvbuf_kib = {bad}\n"));
            assert_eq!((key.as_str(), line), ("media.socket_rcvbuf_kib", 2));
            assert!(msg.contains("between 4 and 4096"), "{msg}");
        }
        assert_eq!(
            load_str("[media]\nsocket_rcvbuf_kib = 8\n", "t")
                .unwrap()
                .media
                .socket_rcvbuf_kib,
            8
        );
        let cfg = load_str(
            "[http3]\ncors_origins = [\"https://a.example\"]\ncors_max_age_secs = 60\n[sip]\ncors_origins = [\"http://localhost:3000\"]\n[[sip_trunk]]\nname = \"p\"\ntarget = \"sip:h\"\npreflight = true\n",
            "t",
        )
        .unwrap();
        assert_eq!(cfg.http3.cors_origins, vec!["https://a.example"]);
        assert_eq!(cfg.http3.cors_max_age_secs, 60);
        assert_eq!(cfg.sip.cors_origins, vec!["http://localhost:3000"]);
        assert!(cfg.sip_trunks[0].preflight);
        let (key, _, _, msg) =
            invalid("[[sip_trunk]]\nname = \"p\"\ntarget = \"sip:h\"\npreflight = \"yes\"\n");
        assert_eq!(key, "sip_trunk[0].preflight");
        assert!(msg.contains("boolean"), "{msg}");
    }

    #[test]
    fn trunk_ping_interval_is_off_or_5_to_3600_seconds() {
        let trunk = |ping: &str| format!("[[sip_trunk]]\nname = \"p\"\ntarget = \"sip:h\"\n{ping}");
        assert_eq!(
            load_str(&trunk(""), "t").unwrap().sip_trunks[0].ping_secs,
            0
        );
        assert_eq!(
            load_str(&trunk("ping_secs = 30\n"), "t")
                .unwrap()
                .sip_trunks[0]
                .ping_secs,
            30
        );
        for bad in ["4", "3601", "-1", "\"30\""] {
            let (key, line, _, msg) = invalid(&trunk(&format!("ping_secs = {bad}\n")));
            assert_eq!(
                (key.as_str(), line),
                ("sip_trunk[0].ping_secs", 4),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn resolve_path_uses_base_dir() {
        let mut cfg = super::super::embedded_default();
        cfg.base_dir = PathBuf::from("/etc/riptide");
        assert_eq!(
            cfg.resolve_path(Path::new("k.pem")),
            PathBuf::from("/etc/riptide/k.pem")
        );
        assert_eq!(cfg.resolve_path(Path::new("/abs")), PathBuf::from("/abs"));
    }

    #[test]
    fn stir_crls_need_verification_and_both_files() {
        let (key, _, _, _) = invalid("[stir]\ncrls = [{ crl = \"a.crl\", signer = \"s.pem\" }]\n");
        assert_eq!(key, "stir.crls");
        let (key, _, _, msg) = invalid(
            "[stir]\nverify = \"reject\"\ntrust_anchors = \"r.pem\"\nx5u_ca = \"r.pem\"\n\
             crls = [{ crl = \"a.crl\" }]\n",
        );
        assert!(key.starts_with("stir.crls"), "{key}: {msg}");
        assert!(msg.contains("signer"), "{msg}");
        let (key, _, _, msg) = invalid("[stir]\nrevocation_policy = \"lenient\"\n");
        assert_eq!(key, "stir.revocation_policy", "{msg}");
    }

    #[test]
    fn stir_signing_needs_all_three_keys_and_an_https_x5u() {
        let (key, _, _, msg) = invalid("[stir]\nsign_cert = \"c.pem\"\n");
        assert_eq!(key, "stir.sign_key");
        assert!(msg.contains("together"), "{msg}");
        let (key, _, _, msg) = invalid(
            "[stir]\nsign_cert = \"c.pem\"\nsign_key = \"k.pem\"\nx5u = \"http://x/c.pem\"\n",
        );
        assert_eq!(key, "stir.x5u");
        assert!(msg.contains("https"), "{msg}");
        let (key, _, _, _) = invalid("[stir]\npublish = \"127.0.0.1:8443\"\n");
        assert_eq!(key, "stir.publish");
        assert!(load_str(
            "[stir]\nsign_cert = \"c.pem\"\nsign_key = \"k.pem\"\nx5u = \"https://h/c.pem\"\n",
            "t"
        )
        .is_ok());
    }
}
