//! Built-in defaults: what `riptide serve` runs with when no configuration file is given.

use super::*;
use std::net::{IpAddr, Ipv4Addr};

/// Origin of the demo page on the default admin listener (`http://127.0.0.1:9060/web/`).
pub const DEMO_ORIGIN: &str = "http://127.0.0.1:9060";

impl Default for General {
    fn default() -> Self {
        General {
            data_dir: default_data_dir(),
            node_name: "riptide".into(),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            worker_threads: None,
        }
    }
}

/// `$XDG_DATA_HOME/riptide`, else `$HOME/.local/share/riptide`, else `./riptide-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("riptide");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/share/riptide");
    }
    PathBuf::from("riptide-data")
}

impl Default for SipConfig {
    fn default() -> Self {
        let addr: SocketAddr = (Ipv4Addr::LOCALHOST, 5060).into();
        SipConfig {
            udp: vec![addr],
            tcp: vec![addr],
            tls: vec![],
            tls_cert: None,
            tls_key: None,
            public_host: None,
            max_calls: 10_000,
            no_answer_timeout_secs: 180,
            t1_ms: 500,
            dns_refresh_secs: 60,
            dns_servers: vec![],
            cors_origins: vec![],
            options_rate: 20,
            options_burst: 40,
            digest_realm: None,
            digest_lockout_secs: 300,
            digest_source_failures: crate::sip::digest::MAX_SOURCE_FAILURES,
            session_expires_secs: 1800,
            min_se_secs: crate::bridge::session_timer::MIN_SE_FLOOR,
        }
    }
}

impl Default for Http3Config {
    fn default() -> Self {
        Http3Config {
            listen: (Ipv4Addr::LOCALHOST, 4443).into(),
            server_name: "localhost".into(),
            cert_file: None,
            key_file: None,
            max_calls: 10_000,
            cors_origins: vec![],
            cors_max_age_secs: 600,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some((Ipv4Addr::LOCALHOST, 9060).into()),
        }
    }
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            mode: OAuthMode::Local,
            issuer: None,
            audience: "riptide".into(),
            jwks_uri: None,
            introspection_endpoint: None,
            client_id: None,
            client_secret_file: None,
            ca_file: None,
            allow_hosts: vec![],
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port_min: 10000,
            port_max: 29999,
            latching: true,
            security: MediaSecurity::default(),
            ice: IceMode::default(),
            dtmf: DtmfMode::default(),
            timeout_secs: 60,
            hold_timeout_secs: 3600,
            socket_rcvbuf_kib: 32,
        }
    }
}

/// The embedded configuration: SIP on 127.0.0.1:5060, HTTP/3 on 127.0.0.1:4443, and an `echo`
/// service reached by calling `sip:echo@127.0.0.1:5060`; the call crosses to our own HTTP/3
/// server (TG `local`) and the audio comes back.
pub fn embedded_default() -> Config {
    Config {
        general: General::default(),
        sip: SipConfig::default(),
        // The demo page riptide serves on its admin listener (/web/) may call the API.
        http3: Http3Config {
            cors_origins: vec![DEMO_ORIGIN.into()],
            ..Http3Config::default()
        },
        admin: AdminConfig::default(),
        stir: StirConfig::default(),
        oauth: OAuthConfig::default(),
        media: MediaConfig::default(),
        tgs: vec![TgConfig {
            name: "local".into(),
            description: "built-in services of this gateway".into(),
            destinations: "*".into(),
            routes: vec![TgRouteConfig {
                prefix: "echo".into(),
                sip_trunk: None,
                echo: true,
            }],
        }],
        sip_trunks: vec![],
        ript_peers: vec![],
        sip_routes: vec![
            SipRouteConfig {
                prefix: "".into(),
                ript_peer: Some("self".into()),
                handlers: None,
            },
            // SIP calls to sip:page…@ ring the pages (and `riptide answer`s) registered on
            // TG "local".
            SipRouteConfig {
                prefix: "page".into(),
                ript_peer: None,
                handlers: Some("local".into()),
            },
        ],
        base_dir: PathBuf::from("."),
    }
}
