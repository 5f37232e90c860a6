//! Gateway configuration: TOML on disk, or the embedded defaults when no file is given.
//!
//! Every struct here is `deny_unknown_fields` so that a misspelt key is an error that names the
//! file, line and key rather than a silently ignored setting. Loading and validation live in
//! `load.rs`; the embedded default configuration lives in `defaults.rs`.

mod defaults;
mod load;
mod ports;

pub use defaults::embedded_default;
pub use load::{
    check_cors_origin, load_file, load_str, normalize_origin, parse_source, ConfigError,
};
pub use ports::{host_media_port_warnings, media_port_warnings, port_pairs, KernelPorts};

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The whole configuration of one gateway instance.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub general: General,
    #[serde(default)]
    pub sip: SipConfig,
    #[serde(default)]
    pub http3: Http3Config,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub media: MediaConfig,
    /// STIR/SHAKEN: signing calls that leave this gateway.
    #[serde(default)]
    pub stir: StirConfig,
    /// OAuth 2.0 on the HTTP/3 side: whose bearer tokens are accepted.
    #[serde(default)]
    pub oauth: OAuthConfig,
    /// Trunk groups this gateway serves on its HTTP/3 side (RIPT server role).
    #[serde(default, rename = "tg")]
    pub tgs: Vec<TgConfig>,
    /// Legacy SIP targets that RIPT calls can be routed to.
    #[serde(default, rename = "sip_trunk")]
    pub sip_trunks: Vec<SipTrunkConfig>,
    /// RIPT servers this gateway calls (RIPT client role).
    #[serde(default, rename = "ript_peer")]
    pub ript_peers: Vec<RiptPeerConfig>,
    /// SIP → RIPT routes, chosen by longest destination prefix.
    #[serde(default, rename = "sip_route")]
    pub sip_routes: Vec<SipRouteConfig>,
    /// Directory of the file this configuration came from; relative paths resolve against it.
    /// Not a TOML key: set by the loader.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct General {
    /// Where generated keys, certificates and revocation state live.
    pub data_dir: PathBuf,
    /// Name of this node; appears in logs, metrics and generated identifiers.
    pub node_name: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// A tracing `EnvFilter` directive, e.g. `info` or `riptide=debug`.
    pub log_level: String,
    /// Threads of the async runtime (SIP, HTTP/3 and the media relay). `None`: one per core.
    pub worker_threads: Option<usize>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    /// PEM files for the SIP-TLS listener; a generated certificate is used when absent.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Host (name or address) put in our Via and Contact headers. Defaults to the first listener's IP.
    pub public_host: Option<String>,
    /// Upper bound on simultaneous calls; new INVITEs beyond it get 503 + Retry-After.
    pub max_calls: usize,
    /// Seconds an outgoing INVITE may ring before it is cancelled (408 toward the caller).
    pub no_answer_timeout_secs: u64,
    /// RFC 3261 T1 in milliseconds (retransmission base).
    pub t1_ms: u64,
    /// Seconds between lookups of the `[[sip_trunk]]` host names (target or outbound proxy);
    /// calls placed after a lookup use the addresses it found. 0: looked up once, at start.
    pub dns_refresh_secs: u64,
    /// DNS servers (`ip:port`) asked for the `[[sip_trunk]]` host names: SRV records and every
    /// address (`/etc/hosts` is then not read). Empty: SRV records and their targets' addresses
    /// from `/etc/resolv.conf`'s servers, other names from the system resolver (`/etc/hosts`,
    /// then DNS).
    pub dns_servers: Vec<SocketAddr>,
    /// Browser origins (`scheme://host[:port]`) an out-of-dialog `OPTIONS` carrying `Origin` may
    /// name and get `Access-Control-Allow-Origin` back (the SIP "CORS" preflight of
    /// draft-jennings-rtcweb-api-00). Any other origin gets 403. Default: none.
    pub cors_origins: Vec<String>,
    /// Out-of-dialog OPTIONS (keep-alives and CORS preflights) answered per second from one
    /// source address, on average; more get 503 with Retry-After. 0: no limit. Default: 20.
    pub options_rate: u32,
    /// OPTIONS one source may send at once before `options_rate` applies. Default: 40.
    pub options_burst: u32,
    /// Digest realm of the `[[sip_trunk]]`s with `auth = "digest"` that set no `realm` of their
    /// own. Default: none.
    pub digest_realm: Option<String>,
    /// Seconds a user stays locked out (403) after 10 wrong Digest responses within this
    /// time of each other, and a source address after `digest_source_failures`.
    /// Default: 300.
    pub digest_lockout_secs: u64,
    /// Wrong Digest responses from one source address, whatever users they name, within
    /// `digest_lockout_secs` of each other, that lock the address out (403 to every INVITE
    /// toward a Digest trunk). 0: addresses are not locked. Default: 30.
    pub digest_source_failures: u32,
    /// Session timers (RFC 4028): the interval in seconds our INVITEs ask for and the longest
    /// we grant; each SIP leg is refreshed (re-INVITE) or ended (BYE) by it. 0: off (no
    /// `Supported: timer`; a `Require: timer` gets 420). Default: 1800.
    pub session_expires_secs: u32,
    /// The shortest session interval we accept (at least 90, RFC 4028's floor); a shorter one
    /// gets 422 with this `Min-SE`. Default: 90.
    pub min_se_secs: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Http3Config {
    /// UDP address of the HTTP/3 (QUIC) listener.
    pub listen: SocketAddr,
    /// DNS name in our certificate and in the call URIs we hand out.
    pub server_name: String,
    /// PEM certificate chain and key; a self-signed certificate is generated in data_dir when absent.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Maximum calls one RIPT client may have open at once on this server.
    pub max_calls: usize,
    /// Browser origins (`scheme://host[:port]`, exact match) allowed to call the API (CORS) and
    /// to open `{call}/media` over WebTransport. `"*"` is refused: the API takes credentials.
    /// Default: none (no browser origin is allowed).
    pub cors_origins: Vec<String>,
    /// `Access-Control-Max-Age` of preflight answers, in seconds (at most 86400). Default: 600.
    pub cors_max_age_secs: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Plain HTTP/1.1 listener for `/metrics` and `/healthz`; `None` disables it.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Address RTP sockets bind to and that we put in SDP `c=`.
    pub ip: std::net::IpAddr,
    /// Inclusive port range for legacy RTP endpoints: a call's SIP leg takes an even port (RTP)
    /// and the next one (RTCP); [`port_pairs`] counts the calls it holds.
    pub port_min: u16,
    pub port_max: u16,
    /// Symmetric RTP: send to where the peer's RTP actually comes from (RFC 4961 / latching).
    pub latching: bool,
    /// Media security on legacy legs that no `[[sip_trunk]]` overrides.
    pub security: MediaSecurity,
    /// ICE on legacy legs that no `[[sip_trunk]]` overrides.
    pub ice: IceMode,
    /// How DTMF is carried on legacy legs that no `[[sip_trunk]]` overrides.
    pub dtmf: DtmfMode,
    /// An answered call whose SIP peer sends nothing (no RTP, no RTCP) for this long is ended;
    /// 0: never.
    pub timeout_secs: u64,
    /// The same while either side holds the call (either SDP says sendonly, recvonly or
    /// inactive); 0: never.
    pub hold_timeout_secs: u64,
    /// Receive buffer asked for on each legacy media socket, in KiB (the kernel doubles it
    /// and caps it at net.core.rmem_max): it bounds how much of a call's media waits when
    /// the gateway falls behind (ADR 0019).
    pub socket_rcvbuf_kib: u32,
}

/// How DTMF reaches a legacy peer. Received, both are always understood.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DtmfMode {
    /// RFC 4733 telephone-events in the RTP stream, relayed as they are.
    #[default]
    Rfc4733,
    /// SIP INFO (`application/dtmf-relay`): telephone-events from the HTTP/3 side become INFO
    /// requests and are not relayed in-band.
    Info,
}

/// STIR/SHAKEN authentication service (RFC 8224/8588). With `sign_cert` and `sign_key` set,
/// calls leaving on SIP carry an `Identity` header and calls leaving on HTTP/3 carry the
/// PASSporT in `POST {TG}/calls`.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StirConfig {
    /// PEM chain of our STI certificate (leaf first, then intermediates), as published at `x5u`.
    pub sign_cert: Option<PathBuf>,
    /// PEM (PKCS#8) P-256 private key of the leaf.
    pub sign_key: Option<PathBuf>,
    /// HTTPS URL where verifiers fetch `sign_cert` (the PASSporT's `x5u` and `info`).
    pub x5u: Option<String>,
    /// Serve `sign_cert` at `x5u`'s path over HTTPS/1.1 on this address, with the gateway's
    /// TLS certificate (for tests and small deployments; production publishes elsewhere).
    pub publish: Option<SocketAddr>,
    /// Verification of SIP calls coming in (RFC 8224 §6.2): `off`, `continue` (the call goes on
    /// with its verstat) or `reject` (failures get 428/436/437/438 or 403 Stale Date).
    pub verify: StirVerifyMode,
    /// PEM trust anchors (STI-CA roots) for `verify`.
    pub trust_anchors: Option<PathBuf>,
    /// No Identity header fails verification (428) instead of `No-TN-Validation`.
    pub require_identity: bool,
    /// PEM roots the HTTPS servers at x5u must chain to.
    pub x5u_ca: Option<PathBuf>,
    /// x5u hosts exempt from the private-address guard (test networks only).
    pub x5u_allow_hosts: Vec<String>,
    /// STI-PA certificate revocation lists, each with the certificate of its signer (STIR-11).
    pub crls: Vec<StirCrlConfig>,
    /// What a CRL outside its validity (`nextUpdate` passed) does: `soft` uses it and warns,
    /// `hard` fails every verification (437) until a current one is loaded.
    pub revocation_policy: StirRevocationPolicy,
}

/// One STI-PA CRL for `[stir] crls`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StirCrlConfig {
    /// PEM CRL.
    pub crl: PathBuf,
    /// PEM certificate of the CRL's signer (the STI-PA CRL signer, not the CA).
    pub signer: PathBuf,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StirRevocationPolicy {
    #[default]
    Soft,
    Hard,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StirVerifyMode {
    #[default]
    Off,
    Continue,
    Reject,
}

/// Which bearer tokens the HTTP/3 side accepts (`[oauth]`). Only the configured mode's tokens
/// pass: with `jwks` or `introspection`, tokens of the local issuer (`riptide token mint`) are
/// refused and its JWK Set is not served.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    /// `local` (the built-in issuer), `jwks` (JWT access tokens of an external issuer, checked
    /// with its JWK Set) or `introspection` (RFC 7662 at the external issuer).
    pub mode: OAuthMode,
    /// The external issuer: the `iss` its tokens and introspection answers must carry.
    pub issuer: Option<String>,
    /// The `aud` a token must name (RFC 9068 §4). Default `riptide`.
    pub audience: String,
    /// `jwks`: https URL of the issuer's JWK Set.
    pub jwks_uri: Option<String>,
    /// `introspection`: https URL of the introspection endpoint.
    pub introspection_endpoint: Option<String>,
    /// `introspection`: our client id at the issuer (HTTP Basic).
    pub client_id: Option<String>,
    /// `introspection`: file holding our client secret (never inline).
    pub client_secret_file: Option<PathBuf>,
    /// PEM roots the issuer's HTTPS certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// Issuer hosts exempt from the private-address guard (an issuer on a private network).
    pub allow_hosts: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OAuthMode {
    #[default]
    Local,
    Jwks,
    Introspection,
}

impl OAuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthMode::Local => "local",
            OAuthMode::Jwks => "jwks",
            OAuthMode::Introspection => "introspection",
        }
    }
}

/// What a legacy (SIP) leg's media must be protected with.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MediaSecurity {
    /// Plain RTP/AVP(F) only; secure offers are refused.
    Rtp,
    /// SDES-SRTP only (RTP/SAVP(F) with `a=crypto`, RFC 4568).
    Sdes,
    /// DTLS-SRTP only (UDP/TLS/RTP/SAVP(F), RFC 5763/5764).
    Dtls,
    /// SDES or DTLS, never plain RTP. riptide offers DTLS-SRTP.
    AnySecure,
    /// Whatever the peer offers; riptide offers RTP/AVP with `a=crypto` and uses SRTP when the
    /// answer keys it.
    #[default]
    BestEffort,
}

impl MediaSecurity {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaSecurity::Rtp => "rtp",
            MediaSecurity::Sdes => "sdes",
            MediaSecurity::Dtls => "dtls",
            MediaSecurity::AnySecure => "any-secure",
            MediaSecurity::BestEffort => "best-effort",
        }
    }
}

/// ICE on a legacy leg (RFC 8445).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum IceMode {
    /// No ICE attributes; ICE in an offer is ignored (media goes to `c=`/`m=`).
    Off,
    /// ICE-lite (§2.5): answer checks, never send them; for a gateway on a public address.
    #[default]
    Lite,
    /// Full ICE: riptide also sends checks and nominates when controlling.
    Full,
}

/// A trunk group served on our HTTP/3 side.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TgConfig {
    /// Path segment under `/.well-known/ript/v1/providertgs/`.
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Destination patterns accepted on this TG (`*` or `+1*` style prefixes).
    #[serde(default = "star")]
    pub destinations: String,
    /// Where calls arriving on this TG go, by longest destination prefix.
    #[serde(default, rename = "route")]
    pub routes: Vec<TgRouteConfig>,
}

fn star() -> String {
    "*".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TgRouteConfig {
    /// Destination prefix (user part / digits); empty matches everything.
    #[serde(default)]
    pub prefix: String,
    /// Name of a `[[sip_trunk]]` to send the call to.
    pub sip_trunk: Option<String>,
    /// Answer with the built-in echo service instead of routing.
    #[serde(default)]
    pub echo: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SipTrunkConfig {
    pub name: String,
    /// SIP URI of the target, e.g. `sip:127.0.0.1:5080;transport=udp`.
    pub target: String,
    /// Optional outbound proxy URI; requests go there with a Route header for the target.
    pub outbound_proxy: Option<String>,
    /// Codecs offered/accepted on this trunk, in preference order.
    #[serde(default = "default_codecs")]
    pub codecs: Vec<String>,
    /// Follow 3xx redirects from this trunk (at most this many hops; 0 disables).
    #[serde(default = "default_redirects")]
    pub max_redirects: u8,
    /// Send each of the trunk's addresses an OPTIONS every this many seconds (5 to 3600); an
    /// address that leaves one unanswered, or answers 408, 503 or 504, is down until it
    /// answers again: new calls try it last. 0: not pinged. Default: 0.
    #[serde(default)]
    pub ping_secs: u32,
    /// Media security on this trunk's legs; `[media] security` when absent.
    pub security: Option<MediaSecurity>,
    /// ICE on this trunk's legs; `[media] ice` when absent.
    pub ice: Option<IceMode>,
    /// Latching on this trunk's legs; `[media] latching` when absent.
    pub latching: Option<bool>,
    /// DTMF toward this trunk; `[media] dtmf` when absent.
    pub dtmf: Option<DtmfMode>,
    /// Sources (`IP` or `IP:port`) whose INVITEs belong to this trunk, so its media policy and
    /// codecs apply to calls it sends us. Default: none (such calls get the `[media]` policy).
    #[serde(default)]
    pub match_sources: Vec<String>,
    /// Before a call from a browser page (a `POST {TG}/calls` with `Origin`) is INVITEd to
    /// this trunk, send it an `OPTIONS` carrying that `Origin`; the INVITE goes only when the
    /// answer's `Access-Control-Allow-Origin` allows it (cached per target and origin for the
    /// answer's Access-Control-Max-Age, else 600 s; a refusing target is not contacted for
    /// browser calls for 30 s). Default: false.
    #[serde(default)]
    pub preflight: bool,
    /// PEM bundle of CAs that issue this trunk's SIP-TLS client certificates. When any trunk
    /// sets this or `tls_client_fingerprints`, the SIP-TLS listener asks every client for a
    /// certificate (optional for the client): one that none of the configured CAs issued and
    /// that no trunk lists fails the handshake. Default: none.
    pub tls_client_ca: Option<PathBuf>,
    /// Hex SHA-256 fingerprints (colons allowed) of the client certificates this trunk's
    /// SIP-TLS connections must present. With entries, requests from the trunk's
    /// `match_sources` are answered 403 unless they arrive over TLS with one of these
    /// certificates (in-dialog requests excepted: calls placed toward the trunk come back
    /// over UDP/TCP or our own TLS connection). A listed self-signed certificate needs no CA.
    /// Default: none.
    #[serde(default)]
    pub tls_client_fingerprints: Vec<String>,
    /// PEM roots the trunk's SIP-TLS server certificate must chain to. Required when the trunk
    /// is reached over TLS (`sips:` or `;transport=tls` in `outbound_proxy`, else `target`);
    /// the certificate must also identify the trunk's domain (RFC 5922). Default: none.
    pub tls_ca: Option<PathBuf>,
    /// The SIP domain the trunk's TLS certificate must identify (and the SNI sent), for a
    /// `target` or `outbound_proxy` written with an IP address. Default: the host of the URI
    /// requests are sent to.
    pub tls_server_name: Option<String>,
    /// PEM certificate chain and key riptide presents on its SIP-TLS connections to this
    /// trunk (mutual TLS). Set both or neither. Default: none.
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// Pass on the `verstat` this trunk puts on P-Asserted-Identity/From (it runs a STIR
    /// verification service) when riptide does not verify itself. Otherwise an incoming
    /// verstat is ignored. Default: false.
    #[serde(default)]
    pub trust_verstat: bool,
    /// `digest`: INVITEs from this trunk's `match_sources` are challenged (401) and go on only
    /// with valid credentials of one of `users` (RFC 3261 §22; SHA-512-256, SHA-256 and MD5,
    /// RFC 8760). Default: `none`.
    #[serde(default)]
    pub auth: SipTrunkAuth,
    /// Digest realm for `auth = "digest"`; `[sip] digest_realm` when absent.
    pub realm: Option<String>,
    /// Who may call in through this trunk with `auth = "digest"`.
    #[serde(default)]
    pub users: Vec<DigestUserConfig>,
    /// Our Digest username when this trunk challenges our INVITEs (401/407); with `password`
    /// or `password_file`.
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// A file holding the password (its line ending is not part of it).
    pub password_file: Option<PathBuf>,
}

/// A password or hash from the configuration; Debug never shows it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Authentication of requests a `[[sip_trunk]]` sends us.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SipTrunkAuth {
    #[default]
    None,
    Digest,
}

/// One user of a digest trunk: a password (inline or in a file), or HA1 values
/// (`H(name:realm:password)` in hex) for one or more algorithms. The algorithms challenged
/// with are those every user of the trunk has.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DigestUserConfig {
    pub name: String,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub ha1_md5: Option<Secret>,
    pub ha1_sha256: Option<Secret>,
    pub ha1_sha512_256: Option<Secret>,
}

pub fn default_codecs() -> Vec<String> {
    ["PCMU", "PCMA", "G722", "opus", "telephone-event", "CN"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn default_redirects() -> u8 {
    3
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RiptPeerConfig {
    pub name: String,
    /// `https://host:port` of the peer's HTTP/3 server.
    pub url: String,
    /// TLS server name to verify; defaults to the URL's host.
    pub server_name: Option<String>,
    /// Trunk group to call on the peer.
    pub tg: String,
    /// PEM file of certificates trusted for this peer (a CA, or the peer's own certificate).
    pub ca_file: Option<PathBuf>,
    /// Hex SHA-256 of the peer's end-entity certificate (DER); when set, only that certificate passes.
    pub pin_sha256: Option<String>,
    /// Bearer token, inline or from a file (exactly one of the two).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// Codecs we advertise toward this peer, in preference order.
    #[serde(default = "default_codecs")]
    pub codecs: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SipRouteConfig {
    /// Destination prefix matched against the request-URI user part; empty matches everything.
    #[serde(default)]
    pub prefix: String,
    /// Name of a `[[ript_peer]]`; or `self` for this gateway's own HTTP/3 server.
    #[serde(default)]
    pub ript_peer: Option<String>,
    /// Name of one of our `[[tg]]`s: the call rings the handlers registered there (browser
    /// pages, `riptide answer`; docs/protocol.md §2.7). Exactly one of this and `ript_peer`.
    #[serde(default)]
    pub handlers: Option<String>,
}
