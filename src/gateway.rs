//! `riptide serve`: builds every room from the configuration and runs until a signal.

use crate::auth::LocalIssuer;
use crate::bridge::driver::{self, Sinks};
use crate::bridge::engine::{
    Engine, EngineConfig, Input, PeerInfo, SipTarget, TgInfo, TgRoute, TgTarget, TrunkInfo,
};
use crate::bridge::secure::MediaPolicy;
use crate::config::{Config, RiptPeerConfig};
use crate::media::MediaHub;
use crate::metrics::Metrics;
use crate::ript::client::{spawn_client, ClientCtx, PeerRuntime};
use crate::ript::server::{spawn_server, ServerCtx};
use crate::sip::dns::{OnSrvFailure, SipResolver};
use crate::sip::msg::{self, Transport};
use crate::sip::srv::HopAddrs;
use crate::sip::transport::{self, Listeners};
use crate::sip::txn::Dest;
use crate::{admin, tls};
use anyhow::{anyhow, bail, Context};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::info;

/// Name of the implicit peer that is this gateway's own HTTP/3 server.
pub const SELF_PEER: &str = "self";

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // Registered before anything listens, so a SIGHUP never finds the default action (exit).
    let reload_signal = reload_signal()?;
    let rt = start(cfg).await?;
    tokio::spawn(reload_on_signal(reload_signal, rt.reloader.clone()));
    info!(
        sip = ?rt.sip_addrs,
        http3 = %rt.http3_addr,
        "riptide ready"
    );
    shutdown_signal().await;
    info!("shutting down");
    Ok(())
}

/// A started gateway; dropping it does not stop the tasks (they end with the runtime).
pub struct Running {
    pub sip_addrs: Vec<SocketAddr>,
    pub http3_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    /// What SIGHUP and `POST /reload` re-read: the TLS certificates of the HTTP/3 and SIP-TLS
    /// listeners, and the STIR trust list and CRLs.
    pub reloader: Arc<Reloader>,
}

/// Starts every listener and task; fails fast (naming the address or file) if one cannot start.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    let data_dir = cfg.resolve_path(&cfg.general.data_dir);
    let http3_certs = tls::CertSlot::load(tls::http3_cert_source(&cfg)?)?;
    let identity = http3_certs.identity();
    let issuer = Arc::new(
        LocalIssuer::load_or_create(&data_dir)
            .with_context(|| format!("token issuer in {}", data_dir.display()))?,
    );
    let metrics = Arc::new(Metrics::default());
    for w in crate::config::host_media_port_warnings(&cfg) {
        tracing::warn!("{w}");
    }

    let (media_tx, media_rx) = mpsc::unbounded_channel();
    // One DTLS-SRTP certificate per gateway process (ECDSA P-256), its fingerprint in our SDP.
    let dtls = Arc::new(
        crate::media::dtls::DtlsIdentity::generate()
            .map_err(|e| anyhow!("DTLS certificate: {e}"))?,
    );
    let dtls_fingerprint = dtls.fingerprint();
    let media = MediaHub::new(&cfg.media, metrics.clone(), media_tx).with_dtls_identity(dtls);
    let (ript_tx, ript_rx) = mpsc::channel(8192);
    let (sip_tx, sip_rx) = mpsc::channel(16384);

    // HTTP/3 server role.
    let server_cfg = tls::quic_server_config(http3_certs.clone())?;
    let endpoint = quic_endpoint(cfg.http3.listen, Some(server_cfg))
        .map_err(|e| anyhow!("HTTP/3 listener {}: {e}", cfg.http3.listen))?;
    let http3_addr = endpoint.local_addr()?;
    let authority = format!("{}:{}", cfg.http3.server_name, http3_addr.port());
    let verifier = crate::auth::verifier_from_config(&cfg, issuer.clone(), &data_dir)?;
    let server = spawn_server(
        endpoint,
        ServerCtx {
            tgs: cfg.tgs.clone(),
            authority: authority.clone(),
            // `[oauth] mode`: the local issuer, or an external one (JWKS or introspection).
            // Good tokens are remembered (peers send the same token on every request);
            // revocation is checked on every request, cached or not (`riptide token revoke`).
            verifier,
            media: media.clone(),
            metrics: metrics.clone(),
            events: ript_tx.clone(),
            cors: crate::ript::server::CorsPolicy::from_config(&cfg.http3),
            // The local issuer's keys are published only when its tokens are the ones accepted.
            jwks: (cfg.oauth.mode == crate::config::OAuthMode::Local).then(|| {
                let issuer = issuer.clone();
                Arc::new(move || issuer.jwks()) as crate::ript::server::JwksSource
            }),
        },
    );

    // HTTP/3 client role: configured peers, plus this gateway itself when a route names it.
    let mut peer_cfgs = cfg.ript_peers.clone();
    if cfg
        .sip_routes
        .iter()
        .any(|r| r.ript_peer.as_deref() == Some(SELF_PEER))
    {
        let tg = cfg
            .tgs
            .first()
            .map(|t| t.name.clone())
            .ok_or_else(|| anyhow!("a sip_route names \"self\" but no [[tg]] is served"))?;
        let now = unix_now();
        let token = issuer.mint(
            "riptide-self",
            &["calls:write".to_string()],
            10 * 365 * 86400,
            now,
        )?;
        peer_cfgs.push(RiptPeerConfig {
            name: SELF_PEER.into(),
            url: format!("https://{http3_addr}"),
            server_name: Some(cfg.http3.server_name.clone()),
            tg,
            ca_file: None,
            pin_sha256: Some(identity.fingerprint_sha256.clone()),
            token: Some(token),
            token_file: None,
            codecs: crate::config::default_codecs(),
        });
    }
    let mut peers = Vec::new();
    for p in &peer_cfgs {
        let mut rt = peer_runtime(&cfg, p).await?;
        if p.name == SELF_PEER {
            // Follows our own certificate through reloads and renewals.
            rt.client_config = tls::self_client_config(http3_certs.clone())?;
        }
        peers.push(rt);
    }
    let client_bind = SocketAddr::new(cfg.http3.listen.ip(), 0);
    let mut client_ep = quic_endpoint(client_bind, None)
        .map_err(|e| anyhow!("HTTP/3 client socket {client_bind}: {e}"))?;
    // Per-peer configs are passed on connect; this default is never used without one.
    if let Some(p) = peers.first() {
        client_ep.set_default_client_config(p.client_config.clone());
    }
    let client = spawn_client(
        client_ep,
        ClientCtx {
            peers,
            media: media.clone(),
            metrics: metrics.clone(),
            events: ript_tx,
        },
    );

    // SIP transports.
    let mut certs = tls::CertReloader::default();
    certs.add("http3", &http3_certs);
    let tls_acceptor = if cfg.sip.tls.is_empty() {
        None
    } else {
        let sip_certs = match tls::sip_cert_source(&cfg) {
            Some(source) => tls::CertSlot::load(source).context("sip.tls_cert")?,
            None => http3_certs.clone(),
        };
        certs.add("sip-tls", &sip_certs);
        Some(tls::sip_tls_acceptor(
            sip_certs,
            tls::sip_client_verifier(&cfg)?,
        )?)
    };
    let certs = Arc::new(certs);
    tokio::spawn(renew_generated_daily(certs.clone()));
    let sip = transport::start(
        Listeners {
            udp: cfg.sip.udp.clone(),
            tcp: cfg.sip.tcp.clone(),
            tls: cfg.sip.tls.clone(),
            tls_acceptor,
        },
        sip_tx,
        metrics.clone(),
    )
    .await?;

    // STIR: publish our signing chain at x5u's path, for verifiers that fetch it over HTTPS.
    if let (Some(addr), Some(x5u), Some(chain)) =
        (cfg.stir.publish, &cfg.stir.x5u, &cfg.stir.sign_cert)
    {
        let path = x5u
            .strip_prefix("https://")
            .and_then(|r| r.find('/').map(|i| r[i + 1..].to_string()))
            .unwrap_or_default();
        let chain_path = cfg.resolve_path(chain);
        let pem = std::fs::read(&chain_path)
            .with_context(|| format!("stir.sign_cert {}", chain_path.display()))?;
        let listener = crate::stir::repo::CertRepo::bind(addr)
            .await
            .with_context(|| format!("stir.publish {addr}"))?;
        let tls = crate::stir::repo::CertRepo::tls_config(&identity)?;
        let mut files = HashMap::new();
        files.insert(path, pem);
        crate::stir::repo::CertRepo::serve(listener, tls, files);
        tracing::info!(%addr, %x5u, "publishing the STIR certificate chain");
    }

    // One resolver (and cache) for the lookups at start and the refreshes.
    let dns = SipResolver::new(&cfg.sip.dns_servers)?.with_transports(&listened(&cfg));
    let ecfg = engine_config(&cfg, &dns, &peer_cfgs, &authority, &dtls_fingerprint).await?;
    let reloader = Arc::new(Reloader {
        certs,
        stir: StirFiles::from_config(&cfg).zip(ecfg.stir_verify.clone()),
    });

    if let Some(a) = cfg.admin.listen {
        let l = admin::bind(a).await?;
        let m = metrics.clone();
        let reload: admin::ReloadHook = {
            let reloader = reloader.clone();
            Arc::new(move || reloader.reload())
        };
        // The demo page under /web/, told the API's address and the live certificate hash.
        let web = admin::WebSettings::from_config(&cfg, &authority, http3_certs.clone());
        tokio::spawn(async move {
            if let Err(e) = admin::serve_admin(l, m, Some(reload), Some(web)).await {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
    }

    sip.set_tls_peers(sip_tls_peers(&cfg, &ecfg.trunks)?);
    let named = trunk_names(&cfg, &ecfg.trunks, |uri| dns.chooses_transport(uri));
    let trunks = ecfg.trunks.clone();
    let engine = Engine::new(ecfg, metrics.clone());
    let (answers, answers_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut taker = TrunkAddrTaker {
        cfg: cfg.clone(),
        trunks,
        sip: sip.clone(),
        engine: answers.clone(),
    };
    let hop_lookup: driver::HopLookup = {
        let (cfg, dns) = (cfg.clone(), dns.clone());
        Arc::new(move |uri: String, transport: Transport| {
            let (cfg, dns) = (cfg.clone(), dns.clone());
            Box::pin(async move {
                let (hop, transport) = dns
                    .resolve_over(&uri, transport, OnSrvFailure::UseAddressRecords)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                Ok(sendable(hop, transport, &cfg).ordered(|n| rand::random_range(0..n)))
            })
        })
    };
    tokio::spawn(refresh_trunk_addrs(
        named,
        Duration::from_secs(cfg.sip.dns_refresh_secs),
        {
            let cfg = cfg.clone();
            move |uri: String, over: Option<Transport>| {
                let (cfg, dns) = (cfg.clone(), dns.clone());
                async move {
                    let found = match over {
                        Some(t) => dns.resolve_among(&uri, OnSrvFailure::Fail, &[t]).await,
                        None => dns.resolve(&uri, OnSrvFailure::Fail).await,
                    };
                    found.map(|(hop, transport)| (sendable(hop, transport, &cfg), transport))
                }
            }
        },
        move |trunk: usize, hop: &HopAddrs, transport: Transport| taker.take(trunk, hop, transport),
    ));
    tokio::spawn(driver::run(
        engine,
        sip_rx,
        ript_rx,
        media_rx,
        answers_rx,
        Sinks {
            sip,
            ript_server: server.cmd_sender(),
            ript_client: client.cmd_sender(),
            media,
            stir: stir_fetcher(&cfg)?,
            hop_lookup,
            answers,
        },
    ));
    let mut sip_addrs = cfg.sip.udp.clone();
    sip_addrs.extend(cfg.sip.tcp.iter().copied());
    Ok(Running {
        sip_addrs,
        http3_addr,
        metrics,
        reloader,
    })
}

/// What SIGHUP and `POST /reload` re-read. Each part keeps what it had when its files do not
/// load; the others are reloaded anyway.
pub struct Reloader {
    certs: Arc<tls::CertReloader>,
    /// The verification service's files, and the service whose trust list and CRLs they replace.
    stir: Option<(StirFiles, Arc<crate::bridge::engine::StirVerify>)>,
}

impl Reloader {
    /// Reloads everything and logs each outcome. `Ok` holds one line per item; `Err` when any
    /// item failed.
    pub fn reload(&self) -> Result<Vec<String>, Vec<String>> {
        let (mut lines, mut failed) = match self.certs.reload() {
            Ok(lines) => (lines, false),
            Err(lines) => (lines, true),
        };
        if let Some((files, stir)) = &self.stir {
            match files.reload(&stir.verifier, unix_now()) {
                Ok(line) => lines.push(line),
                Err(line) => {
                    failed = true;
                    lines.push(line);
                }
            }
        }
        if failed {
            Err(lines)
        } else {
            Ok(lines)
        }
    }
}

/// SIGHUP, where there are signals.
#[cfg(unix)]
fn reload_signal() -> anyhow::Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")
}

#[cfg(not(unix))]
fn reload_signal() -> anyhow::Result<()> {
    Ok(())
}

/// Reloads on every SIGHUP ([`Reloader`]): new handshakes and verifications use the new files,
/// existing connections and calls go on; a file that does not load is logged and the old one
/// stays.
#[cfg(unix)]
async fn reload_on_signal(mut hup: tokio::signal::unix::Signal, reloader: Arc<Reloader>) {
    while hup.recv().await.is_some() {
        info!("SIGHUP: reloading TLS certificates and STIR trust material");
        // Each outcome is logged by the reloader.
        let _ = reloader.reload();
    }
}

#[cfg(not(unix))]
async fn reload_on_signal(_: (), _: Arc<Reloader>) {}

/// Renews the generated development certificate once a day when it is near its end, so a
/// long-running gateway never serves an expired one. Operator files are left to reloads.
async fn renew_generated_daily(certs: Arc<tls::CertReloader>) {
    let day = Duration::from_secs(86400);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + day, day);
    loop {
        tick.tick().await;
        let _ = certs.renew_generated();
    }
}

/// Socket buffer size asked for on QUIC sockets: every call's media shares one socket, so
/// the kernel default (~208 KiB, ~1000 datagrams) overflows in bursts at a few hundred calls.
/// The kernel caps it at net.core.rmem_max / wmem_max.
const QUIC_SOCKET_BUFFER: usize = 4 << 20;

/// A quinn endpoint on a socket with large kernel buffers.
fn quic_endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(QUIC_SOCKET_BUFFER) {
        tracing::warn!(%addr, error = %e, "could not enlarge the QUIC receive buffer");
    }
    if let Err(e) = socket.set_send_buffer_size(QUIC_SOCKET_BUFFER) {
        tracing::warn!(%addr, error = %e, "could not enlarge the QUIC send buffer");
    }
    socket.bind(&addr.into())?;
    let rcv = socket.recv_buffer_size().unwrap_or(0);
    tracing::debug!(%addr, receive_buffer = rcv, "QUIC socket");
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket.into(),
        Arc::new(quinn::TokioRuntime),
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The runtime form of one `[[ript_peer]]`: its address resolved, its token read and its TLS
/// client configuration built (also used by `riptide call`).
pub(crate) async fn peer_runtime(cfg: &Config, p: &RiptPeerConfig) -> anyhow::Result<PeerRuntime> {
    let authority = p
        .url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow!("ript_peer {}: url must start with https://", p.name))?
        .trim_end_matches('/');
    let addr = tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("ript_peer {}: cannot resolve {authority}", p.name))?
        .next()
        .ok_or_else(|| anyhow!("ript_peer {}: {authority} has no address", p.name))?;
    let token = match (&p.token, &p.token_file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(f)) => {
            let f = cfg.resolve_path(f);
            std::fs::read_to_string(&f)
                .with_context(|| format!("ript_peer {}: token_file {}", p.name, f.display()))?
                .trim()
                .to_string()
        }
        (None, None) => bail!("ript_peer {}: set token or token_file", p.name),
    };
    Ok(PeerRuntime {
        name: p.name.clone(),
        addr,
        server_name: tls::peer_server_name(p)?,
        tg: p.tg.clone(),
        token,
        client_config: tls::quic_client_config(p, cfg)?,
    })
}

/// The authentication service's key and x5u from `[stir]`, when signing is configured.
fn stir_signer(cfg: &Config) -> anyhow::Result<Option<Arc<crate::bridge::engine::StirSigner>>> {
    let st = &cfg.stir;
    let (Some(key), Some(x5u)) = (&st.sign_key, &st.x5u) else {
        return Ok(None);
    };
    let path = cfg.resolve_path(key);
    let pem = std::fs::read(&path).with_context(|| format!("stir.sign_key {}", path.display()))?;
    let key = crate::stir::SigningKey::from_pem(&pem)
        .map_err(|e| anyhow!("stir.sign_key {}: {e}", path.display()))?;
    Ok(Some(Arc::new(crate::bridge::engine::StirSigner {
        key,
        x5u: x5u.clone(),
    })))
}

/// The files STIR verification trusts (`[stir] trust_anchors` and `crls`), read at start and on
/// every reload.
#[derive(Debug, Clone)]
struct StirFiles {
    anchors: std::path::PathBuf,
    /// `(crl, signer)`.
    crls: Vec<(std::path::PathBuf, std::path::PathBuf)>,
}

impl StirFiles {
    /// `None` when verification is off or has no trust anchors (nothing is verified then).
    fn from_config(cfg: &Config) -> Option<StirFiles> {
        let st = &cfg.stir;
        if st.verify == crate::config::StirVerifyMode::Off {
            return None;
        }
        Some(StirFiles {
            anchors: cfg.resolve_path(st.trust_anchors.as_ref()?),
            crls: st
                .crls
                .iter()
                .map(|c| (cfg.resolve_path(&c.crl), cfg.resolve_path(&c.signer)))
                .collect(),
        })
    }

    /// Reads and checks every file; the error names the key and the file.
    fn load(&self) -> anyhow::Result<(crate::stir::TrustStore, Vec<crate::stir::StiCrl>)> {
        let path = &self.anchors;
        let pem = std::fs::read(path)
            .with_context(|| format!("stir.trust_anchors {}", path.display()))?;
        let trust = crate::stir::TrustStore::from_pem(&pem)
            .map_err(|e| anyhow!("stir.trust_anchors {}: {e}", path.display()))?;
        let mut crls = Vec::with_capacity(self.crls.len());
        for (crl_path, signer_path) in &self.crls {
            let crl = std::fs::read(crl_path)
                .with_context(|| format!("stir.crls crl {}", crl_path.display()))?;
            let signer = std::fs::read(signer_path)
                .with_context(|| format!("stir.crls signer {}", signer_path.display()))?;
            let crl = crate::stir::StiCrl::from_pem(&crl, &signer).map_err(|e| {
                anyhow!(
                    "stir.crls {} (signer {}): {e}",
                    crl_path.display(),
                    signer_path.display()
                )
            })?;
            crls.push(crl);
        }
        Ok((trust, crls))
    }

    /// Loads the files into `verifier`, all or nothing, and logs the outcome. The line (`Ok`
    /// or `Err`) says what is in use afterwards.
    fn reload(&self, verifier: &crate::stir::verify::Verifier, now: u64) -> Result<String, String> {
        match self.load() {
            Ok((trust, crls)) => {
                let line = format!("stir: now {}", self.describe(&trust, &crls, now));
                for ((path, _), crl) in self.crls.iter().zip(&crls) {
                    let fresh = crl.freshness(now);
                    if fresh != crate::stir::cert::CrlFreshness::Current {
                        tracing::warn!(crl = %path.display(), freshness = %fresh, "STIR CRL reloaded, but it does not cover the current time");
                    }
                }
                verifier.replace_material(trust, crls);
                tracing::info!(%line, "STIR trust list and CRLs reloaded: new verifications use them");
                Ok(line)
            }
            Err(e) => {
                let m = verifier.material();
                let kept = self.describe(&m.trust, &m.crls, now);
                tracing::error!(error = %format!("{e:#}"), %kept, "STIR reload failed; the trust list and CRLs in use stay");
                Err(format!("stir: reload failed, keeping {kept}: {e:#}"))
            }
        }
    }

    fn describe(
        &self,
        trust: &crate::stir::TrustStore,
        crls: &[crate::stir::StiCrl],
        now: u64,
    ) -> String {
        let mut out = format!("{} trust anchor(s)", trust.len());
        for ((path, _), crl) in self.crls.iter().zip(crls) {
            let name = path
                .file_name()
                .unwrap_or(path.as_os_str())
                .to_string_lossy();
            out.push_str(&format!(
                ", CRL {name}: {} revoked, {}",
                crl.len(),
                crl.freshness(now)
            ));
        }
        out
    }
}

/// The verification service from `[stir]`, when `verify` is on.
fn stir_verifier(cfg: &Config) -> anyhow::Result<Option<Arc<crate::bridge::engine::StirVerify>>> {
    use crate::config::StirVerifyMode;
    let st = &cfg.stir;
    let Some(files) = StirFiles::from_config(cfg) else {
        return Ok(None);
    };
    let (trust, crls) = files.load()?;
    let policy = crate::stir::verify::VerifyPolicy {
        require_identity: st.require_identity,
        revocation: match st.revocation_policy {
            crate::config::StirRevocationPolicy::Soft => crate::stir::RevocationPolicy::Soft,
            crate::config::StirRevocationPolicy::Hard => crate::stir::RevocationPolicy::Hard,
        },
        ..Default::default()
    };
    Ok(Some(Arc::new(crate::bridge::engine::StirVerify {
        verifier: crate::stir::verify::Verifier::new(trust, crls, policy),
        reject: st.verify == StirVerifyMode::Reject,
    })))
}

/// The x5u fetcher for the verification service, when `verify` is on.
pub fn stir_fetcher(cfg: &Config) -> anyhow::Result<Option<crate::stir::fetch::X5uFetcher>> {
    let st = &cfg.stir;
    let (crate::config::StirVerifyMode::Continue | crate::config::StirVerifyMode::Reject, Some(ca)) =
        (st.verify, &st.x5u_ca)
    else {
        return Ok(None);
    };
    let mut fc = crate::stir::fetch::FetchConfig::from_ca_file(&cfg.resolve_path(ca))
        .context("stir.x5u_ca")?;
    fc.guard.allowed_hosts = st.x5u_allow_hosts.clone();
    Ok(Some(crate::stir::fetch::X5uFetcher::new(fc)?))
}

/// Resolves names and URIs of the configuration into what the engine works with.
pub async fn engine_config(
    cfg: &Config,
    dns: &SipResolver,
    peers: &[RiptPeerConfig],
    authority: &str,
    dtls_fingerprint: &str,
) -> anyhow::Result<EngineConfig> {
    let mut sip_hosts = HashMap::new();
    let host_of = |a: &SocketAddr| {
        let h = cfg
            .sip
            .public_host
            .clone()
            .unwrap_or_else(|| a.ip().to_string());
        format!("{h}:{}", a.port())
    };
    if let Some(a) = cfg.sip.udp.first() {
        sip_hosts.insert(Transport::Udp, host_of(a));
    }
    if let Some(a) = cfg.sip.tcp.first() {
        sip_hosts.insert(Transport::Tcp, host_of(a));
    }
    if let Some(a) = cfg.sip.tls.first() {
        sip_hosts.insert(Transport::Tls, host_of(a));
    }
    // Every trunk's next hop looked up at once: with DNS down, each name waits for its
    // resolver's timeouts, and the start should wait for that once, not once per trunk.
    // Each trunk's next hop: its outbound proxy, else its target.
    let vias: Vec<&str> = cfg
        .sip_trunks
        .iter()
        .map(|t| t.outbound_proxy.as_deref().unwrap_or(&t.target))
        .collect();
    for (t, via) in cfg.sip_trunks.iter().zip(&vias) {
        msg::uri_target(via)
            .ok_or_else(|| anyhow!("sip_trunk {}: {via} is not a SIP URI", t.name))?;
    }
    let lookups = futures_util::future::join_all(
        vias.iter()
            .map(|via| dns.resolve(via, OnSrvFailure::UseAddressRecords)),
    )
    .await;
    let mut trunks = Vec::new();
    for ((t, via), found) in cfg.sip_trunks.iter().zip(vias).zip(lookups) {
        let (host, port, _) = msg::uri_target(&t.target)
            .ok_or_else(|| anyhow!("sip_trunk {}: target {} is not a SIP URI", t.name, t.target))?;
        let host = match port {
            Some(p) if host.contains(':') => format!("[{host}]:{p}"),
            Some(p) => format!("{host}:{p}"),
            None => host,
        };
        // A name that cannot be looked up now (DNS down, or not there yet) does not keep the
        // gateway from starting: that trunk's calls get 503 until a refresh finds it.
        let (hop, transport, unresolved) = match found {
            Ok((hop, transport)) => (sendable(hop, transport, cfg), transport, false),
            // Looked up at start only: a name not found now would never be.
            Err(e) if cfg.sip.dns_refresh_secs == 0 => {
                return Err(e.context(format!("sip_trunk {}", t.name)));
            }
            Err(e) => {
                tracing::warn!(
                    trunk = %t.name,
                    error = %format!("{e:#}"),
                    every_secs = cfg.sip.dns_refresh_secs,
                    "trunk host name not found at start: its calls get 503 until a lookup finds it"
                );
                let transport = dns.fallback_transport(via).unwrap_or(Transport::Udp);
                let placeholder = HopAddrs {
                    addrs: vec![SocketAddr::from(([0, 0, 0, 0], 0))],
                    ranks: vec![],
                };
                (placeholder, transport, true)
            }
        };
        trunks.push(TrunkInfo {
            name: t.name.clone(),
            host,
            dest: Dest {
                addr: hop.addrs[0],
                transport,
                conn: None,
            },
            alternates: hop.addrs[1..].to_vec(),
            ranks: hop.ranks,
            proxy_route: t
                .outbound_proxy
                .as_ref()
                .map(|p| format!("<{};lr>", p.trim_end_matches(";lr"))),
            codecs: t.codecs.clone(),
            max_redirects: t.max_redirects,
            media: MediaPolicy {
                security: t.security.unwrap_or(cfg.media.security),
                ice: t.ice.unwrap_or(cfg.media.ice),
                latching: t.latching.unwrap_or(cfg.media.latching),
                dtmf: t.dtmf.unwrap_or(cfg.media.dtmf),
            },
            match_sources: t
                .match_sources
                .iter()
                .filter_map(|s| crate::config::parse_source(s))
                .collect(),
            preflight: t.preflight,
            tls_client_fingerprints: t
                .tls_client_fingerprints
                .iter()
                .map(|f| {
                    tls::parse_sha256_fingerprint(f).ok_or_else(|| {
                        anyhow!("sip_trunk {}: {f:?} is not a SHA-256 fingerprint", t.name)
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            trust_verstat: t.trust_verstat,
            digest_users: digest_users(cfg, t)?,
            digest_login: digest_login(cfg, t)?,
            unresolved,
            ping: (t.ping_secs > 0).then(|| Duration::from_secs(u64::from(t.ping_secs))),
        });
    }
    let trunk_index = |name: &str| trunks.iter().position(|t| t.name == name);
    let mut tgs = Vec::new();
    for tg in &cfg.tgs {
        let mut routes = Vec::new();
        for r in &tg.routes {
            let target = if r.echo {
                TgTarget::Echo
            } else {
                let name = r.sip_trunk.as_deref().unwrap_or("");
                TgTarget::Trunk(
                    trunk_index(name)
                        .ok_or_else(|| anyhow!("tg {}: unknown sip_trunk {name}", tg.name))?,
                )
            };
            routes.push(TgRoute {
                prefix: r.prefix.clone(),
                target,
            });
        }
        tgs.push(TgInfo {
            name: tg.name.clone(),
            routes,
        });
    }
    let mut sip_routes = Vec::new();
    for r in &cfg.sip_routes {
        let target = match (&r.ript_peer, &r.handlers) {
            (_, Some(tg)) => SipTarget::Handlers(tg.clone()),
            (Some(peer), None) => SipTarget::Peer(
                peers
                    .iter()
                    .position(|p| &p.name == peer)
                    .ok_or_else(|| anyhow!("sip_route: unknown ript_peer {peer}"))?,
            ),
            (None, None) => return Err(anyhow!("sip_route {:?} goes nowhere", r.prefix)),
        };
        sip_routes.push((r.prefix.clone(), target));
    }
    Ok(EngineConfig {
        session_timer: crate::bridge::session_timer::TimerConfig {
            expires: cfg.sip.session_expires_secs,
            min_se: cfg.sip.min_se_secs,
        },
        node: cfg.general.node_name.clone(),
        sip_hosts,
        media_ip: cfg.media.ip,
        port_min: cfg.media.port_min,
        port_max: cfg.media.port_max,
        media_timeout: (cfg.media.timeout_secs > 0)
            .then(|| Duration::from_secs(cfg.media.timeout_secs)),
        hold_media_timeout: (cfg.media.hold_timeout_secs > 0)
            .then(|| Duration::from_secs(cfg.media.hold_timeout_secs)),
        media: MediaPolicy {
            security: cfg.media.security,
            ice: cfg.media.ice,
            latching: cfg.media.latching,
            dtmf: cfg.media.dtmf,
        },
        dtls_fingerprint: dtls_fingerprint.to_string(),
        t1: Duration::from_millis(cfg.sip.t1_ms.max(1)),
        max_calls: cfg.sip.max_calls.max(1),
        no_answer_timeout: Duration::from_secs(cfg.sip.no_answer_timeout_secs.max(1)),
        sip_routes,
        peers: peers
            .iter()
            .map(|p| PeerInfo {
                name: p.name.clone(),
                codecs: p.codecs.clone(),
            })
            .collect(),
        tgs,
        trunks,
        http_authority: authority.to_string(),
        events_grace: Duration::from_secs(30),
        keepalive: Some(Duration::from_secs(10)),
        max_calls_per_client: cfg.http3.max_calls.max(1),
        stir: stir_signer(cfg)?,
        stir_verify: stir_verifier(cfg)?,
        sip_cors_origins: cfg.sip.cors_origins.clone(),
        options_limit: (cfg.sip.options_rate > 0)
            .then_some((cfg.sip.options_rate, cfg.sip.options_burst)),
    })
}

/// Outgoing SIP-TLS client settings by address, for the trunks reached over TLS. Connections
/// are shared by address, so trunks resolving to one address must agree on their TLS keys.
fn sip_tls_peers(
    cfg: &Config,
    trunks: &[TrunkInfo],
) -> anyhow::Result<HashMap<SocketAddr, tls::SipTlsClient>> {
    type Settings<'a> = (
        String,
        Option<&'a std::path::PathBuf>,
        Option<&'a std::path::PathBuf>,
        Option<&'a std::path::PathBuf>,
    );
    let mut out = HashMap::new();
    let mut seen: HashMap<SocketAddr, (&str, Settings<'_>)> = HashMap::new();
    for t in &cfg.sip_trunks {
        let Some(info) = trunks.iter().find(|i| i.name == t.name) else {
            continue;
        };
        if info.dest.transport != Transport::Tls {
            continue;
        }
        if info.unresolved {
            // No address to reach it at yet; its settings are checked all the same.
            tls::sip_trunk_tls(cfg, t)?;
            continue;
        }
        let settings = (
            tls::sip_trunk_domain(t)?,
            t.tls_ca.as_ref(),
            t.tls_client_cert.as_ref(),
            t.tls_client_key.as_ref(),
        );
        // Every address the trunk's name has: a failover or a refreshed address is reached
        // with the same settings.
        let mut client = None;
        for addr in info.addrs() {
            if let Some((other, s)) = seen.get(&addr) {
                if *s != settings {
                    bail!(
                        "sip_trunk {} and sip_trunk {other} are both reached over TLS at {addr} \
                         but differ in their TLS settings (domain, tls_ca, tls_client_cert, \
                         tls_client_key); SIP-TLS connections are shared by address",
                        t.name
                    );
                }
                continue;
            }
            let c = match &client {
                Some(c) => c,
                None => client.insert(tls::sip_trunk_tls(cfg, t)?),
            };
            info!(trunk = %t.name, dest = %addr, domain = %settings.0, "SIP-TLS toward this trunk (RFC 5922 identity check)");
            out.insert(addr, c.clone());
            seen.insert(addr, (t.name.as_str(), settings.clone()));
        }
    }
    Ok(out)
}

/// A password from the configuration, inline or from a file (without its line ending).
fn config_secret(
    cfg: &Config,
    inline: Option<&crate::config::Secret>,
    file: Option<&std::path::Path>,
    what: &str,
) -> anyhow::Result<Option<String>> {
    if let Some(p) = inline {
        return Ok(Some(p.0.clone()));
    }
    let Some(f) = file else {
        return Ok(None);
    };
    let f = cfg.resolve_path(f);
    let text = std::fs::read_to_string(&f).with_context(|| format!("{what} {}", f.display()))?;
    let pw = text.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        bail!("{what} {} is empty", f.display());
    }
    Ok(Some(pw))
}

/// The users a `[[sip_trunk]]` with `auth = "digest"` challenges INVITEs for.
fn digest_users(
    cfg: &Config,
    t: &crate::config::SipTrunkConfig,
) -> anyhow::Result<Option<Arc<crate::sip::digest::UserDb>>> {
    use crate::sip::digest::{Algorithm, UserDb, UserSecret};
    if t.auth != crate::config::SipTrunkAuth::Digest {
        return Ok(None);
    }
    let realm = t
        .realm
        .clone()
        .or_else(|| cfg.sip.digest_realm.clone())
        .ok_or_else(|| anyhow!("sip_trunk {}: auth = \"digest\" without a realm", t.name))?;
    let mut users = Vec::with_capacity(t.users.len());
    for u in &t.users {
        let what = format!("sip_trunk {} user {}: password_file", t.name, u.name);
        let secret =
            match config_secret(cfg, u.password.as_ref(), u.password_file.as_deref(), &what)? {
                Some(pw) => UserSecret::Password(pw),
                None => UserSecret::Ha1(
                    [
                        (Algorithm::Sha512_256, &u.ha1_sha512_256),
                        (Algorithm::Sha256, &u.ha1_sha256),
                        (Algorithm::Md5, &u.ha1_md5),
                    ]
                    .into_iter()
                    .filter_map(|(a, h)| h.as_ref().map(|h| (a, h.0.clone())))
                    .collect(),
                ),
            };
        users.push((u.name.clone(), secret));
    }
    let db = UserDb::new(realm, users, cfg.sip.digest_lockout_secs.max(1))
        .map_err(|e| anyhow!("sip_trunk {}: {e}", t.name))?
        .with_source_failures(cfg.sip.digest_source_failures);
    Ok(Some(Arc::new(db)))
}

/// Our login toward a `[[sip_trunk]]` that challenges our INVITEs.
fn digest_login(
    cfg: &Config,
    t: &crate::config::SipTrunkConfig,
) -> anyhow::Result<Option<Arc<crate::sip::digest::Login>>> {
    let Some(user) = &t.username else {
        return Ok(None);
    };
    let what = format!("sip_trunk {}: password_file", t.name);
    let pw = config_secret(cfg, t.password.as_ref(), t.password_file.as_deref(), &what)?
        .ok_or_else(|| anyhow!("sip_trunk {}: username without password", t.name))?;
    Ok(Some(Arc::new(crate::sip::digest::Login::new(user, pw))))
}

/// The addresses UDP requests can go to: those of a family a `[sip] udp` listener has (requests
/// leave from a listener). A name with AAAA records, on a gateway listening on IPv4 only, would
/// otherwise cost each call a Timer B per IPv6 address. All of them when none fits, so that the
/// failure shows where the messages are sent. TCP and TLS connect from any local address.
fn sendable(hop: HopAddrs, transport: Transport, cfg: &Config) -> HopAddrs {
    if transport != Transport::Udp {
        return hop;
    }
    let mut fits = hop.clone();
    fits.retain(|a| cfg.sip.udp.iter().any(|l| l.is_ipv4() == a.is_ipv4()));
    if fits.addrs.is_empty() {
        hop
    } else {
        fits
    }
}

/// The transports this gateway listens on, and so can put in a Contact: those a trunk's NAPTR
/// and SRV records may choose.
fn listened(cfg: &Config) -> Vec<Transport> {
    [
        (Transport::Udp, &cfg.sip.udp),
        (Transport::Tcp, &cfg.sip.tcp),
        (Transport::Tls, &cfg.sip.tls),
    ]
    .into_iter()
    .filter(|(_, addrs)| !addrs.is_empty())
    .map(|(t, _)| t)
    .collect()
}

/// A `[[sip_trunk]]` whose next hop (outbound proxy, else target) is a host name.
#[derive(Debug, Clone, PartialEq)]
struct NamedTrunk {
    /// Its place in the engine's list.
    trunk: usize,
    uri: String,
    /// The transport chosen at start (by the URI, or its NAPTR and SRV records): refreshes
    /// ask for that transport's records, and calls keep it.
    transport: Transport,
    /// The name was not found at start (nor since): the trunk has no address.
    unresolved: bool,
    /// ... and its DNS records choose the transport: the first lookup that finds it chooses
    /// among every listened transport, as the start would have.
    choose: bool,
    /// What the name resolved to last.
    hop: HopAddrs,
}

/// The trunks of `cfg` named by host name, with the addresses `trunks` (the engine's list,
/// resolved at start) has for them. `dns_chooses(uri)`: whether DNS records choose that URI's
/// transport.
fn trunk_names(
    cfg: &Config,
    trunks: &[TrunkInfo],
    dns_chooses: impl Fn(&str) -> bool,
) -> Vec<NamedTrunk> {
    cfg.sip_trunks
        .iter()
        .zip(trunks)
        .enumerate()
        .filter_map(|(i, (t, info))| {
            let uri = t.outbound_proxy.as_deref().unwrap_or(&t.target);
            msg::uri_socket(uri).is_none().then(|| NamedTrunk {
                trunk: i,
                uri: uri.to_string(),
                transport: info.dest.transport,
                unresolved: info.unresolved,
                choose: info.unresolved && dns_chooses(uri),
                hop: info.hop(),
            })
        })
        .collect()
}

/// Hands a trunk's newly looked-up addresses on (ADR 0020): SIP-TLS settings are found by
/// address, so the new addresses get theirs before any call can be sent there (the old ones keep
/// theirs for calls under way), then the engine is told.
struct TrunkAddrTaker {
    cfg: Config,
    /// The trunks as the engine has them, kept up to date with what was taken.
    trunks: Vec<TrunkInfo>,
    sip: transport::SipSender,
    engine: tokio::sync::mpsc::UnboundedSender<Input>,
}

impl TrunkAddrTaker {
    fn take(&mut self, trunk: usize, hop: &HopAddrs, transport: Transport) -> Taken {
        let Some(t) = self.trunks.get(trunk).filter(|_| !hop.addrs.is_empty()) else {
            return Taken::No;
        };
        if transport == Transport::Tls {
            let mut next = self.trunks.clone();
            next[trunk].dest.transport = transport;
            next[trunk].set_hop(hop);
            match sip_tls_peers(&self.cfg, &next) {
                Ok(peers) => self.sip.add_tls_peers(peers),
                Err(e) => {
                    tracing::warn!(trunk = %t.name, addresses = ?hop.addrs, error = %format!("{e:#}"), "new trunk addresses not taken: their SIP-TLS settings failed");
                    return Taken::No;
                }
            }
        }
        let input = Input::TrunkAddrs {
            trunk,
            hop: hop.clone(),
            transport,
        };
        if self.engine.send(input).is_err() {
            return Taken::EngineGone;
        }
        self.trunks[trunk].dest.transport = transport;
        self.trunks[trunk].set_hop(hop);
        Taken::Yes
    }
}

/// What became of the addresses a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Taken {
    Yes,
    /// Not usable now (their TLS settings failed): the next lookup offers them again.
    No,
    /// The engine's driver has ended.
    EngineGone,
}

/// Looks the trunks' host names up again every `every` (ADR 0020) and calls `changed(trunk,
/// addresses, transport)` when a lookup finds addresses other than the last ones taken.
/// `resolve(uri, transport)` looks over that transport only, or with `None` lets DNS choose
/// among all (a trunk whose name was not found at start). A lookup that
/// fails, or finds nothing, leaves the trunk's addresses as they were. Ends when the engine is
/// gone.
async fn refresh_trunk_addrs<F, Fut>(
    mut names: Vec<NamedTrunk>,
    every: Duration,
    resolve: F,
    mut changed: impl FnMut(usize, &HopAddrs, Transport) -> Taken,
) where
    F: Fn(String, Option<Transport>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(HopAddrs, Transport)>>,
{
    if names.is_empty() || every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for t in &mut names {
            let over = (!t.choose).then_some(t.transport);
            match resolve(t.uri.clone(), over).await {
                Ok((hop, transport))
                    if !hop.addrs.is_empty() && (hop != t.hop || transport != t.transport) =>
                {
                    match changed(t.trunk, &hop, transport) {
                        Taken::Yes => {
                            t.hop = hop;
                            t.transport = transport;
                            t.unresolved = false;
                            t.choose = false;
                        }
                        Taken::No => {}
                        Taken::EngineGone => return,
                    }
                }
                Ok((hop, _)) if !hop.addrs.is_empty() => {}
                Ok(_) | Err(_) if t.unresolved => {
                    tracing::warn!(uri = %t.uri, "trunk host name still not found; its calls get 503")
                }
                Ok(_) => {
                    tracing::warn!(uri = %t.uri, "trunk host name has no address now; keeping the last ones")
                }
                Err(e) => {
                    tracing::warn!(uri = %t.uri, error = %format!("{e:#}"), "trunk host name lookup failed; keeping the last addresses")
                }
            }
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system_dns() -> SipResolver {
        SipResolver::new(&[]).unwrap()
    }

    #[test]
    fn the_transports_dns_may_choose_are_those_listened_on() {
        let mut cfg = crate::config::load_str("", "test.toml").unwrap();
        cfg.sip.udp = vec!["127.0.0.1:5060".parse().unwrap()];
        cfg.sip.tcp = vec![];
        cfg.sip.tls = vec![];
        assert_eq!(listened(&cfg), vec![Transport::Udp]);
        cfg.sip.tcp = vec!["127.0.0.1:5060".parse().unwrap()];
        cfg.sip.udp = vec![];
        assert_eq!(listened(&cfg), vec![Transport::Tcp]);
        cfg.sip.udp = vec!["127.0.0.1:5060".parse().unwrap()];
        cfg.sip.tls = vec!["127.0.0.1:5061".parse().unwrap()];
        assert_eq!(
            listened(&cfg),
            vec![Transport::Udp, Transport::Tcp, Transport::Tls]
        );
    }

    #[test]
    fn udp_trunk_addresses_are_those_of_a_family_we_listen_on() {
        let v4: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:5060".parse().unwrap();
        let mut cfg =
            crate::config::load_str("[sip]\nudp = [\"127.0.0.1:5060\"]\n", "t.toml").unwrap();
        let plain = |a: Vec<SocketAddr>| HopAddrs::plain(a);
        assert_eq!(
            sendable(plain(vec![v6, v4]), Transport::Udp, &cfg),
            plain(vec![v4])
        );
        assert_eq!(
            sendable(plain(vec![v6, v4]), Transport::Tcp, &cfg),
            plain(vec![v6, v4])
        );
        assert_eq!(
            sendable(plain(vec![v6]), Transport::Udp, &cfg),
            plain(vec![v6]),
            "none fits: all, so that the failure shows"
        );
        // Addresses from SRV keep their ranks.
        let rank = |target| crate::sip::srv::SrvRank::new(10, 0, target);
        let ranked = HopAddrs {
            addrs: vec![v6, v4],
            ranks: vec![rank(0), rank(1)],
        };
        assert_eq!(
            sendable(ranked, Transport::Udp, &cfg),
            HopAddrs {
                addrs: vec![v4],
                ranks: vec![rank(1)],
            }
        );
        cfg.sip.udp.push("[::1]:5060".parse().unwrap());
        assert_eq!(
            sendable(plain(vec![v6, v4]), Transport::Udp, &cfg),
            plain(vec![v6, v4])
        );
    }

    #[test]
    fn trunks_named_by_host_name_are_the_ones_looked_up_again() {
        let cfg = crate::config::load_str(
            r#"
[[sip_trunk]]
name = "literal"
target = "sip:192.0.2.1:5060"

[[sip_trunk]]
name = "named"
target = "sip:pbx.example.net;transport=tcp"

[[sip_trunk]]
name = "named-behind-a-literal-proxy"
target = "sip:pbx.example.net"
outbound_proxy = "sip:192.0.2.2"

[[sip_trunk]]
name = "literal-behind-a-named-proxy"
target = "sip:192.0.2.3"
outbound_proxy = "sip:proxy.example.net:5070"
"#,
            "test.toml",
        )
        .unwrap();
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        // What engine_config would have found at start.
        let mut trunks = vec![EngineConfig::example().trunks[0].clone(); 4];
        trunks[1].dest.addr = addr("192.0.2.20:5060");
        trunks[1].dest.transport = Transport::Tcp;
        trunks[1].alternates = vec![addr("192.0.2.21:5060")];
        trunks[3].dest.addr = addr("192.0.2.30:5070");
        assert_eq!(
            trunk_names(&cfg, &trunks, |_| true),
            vec![
                NamedTrunk {
                    trunk: 1,
                    uri: "sip:pbx.example.net;transport=tcp".into(),
                    transport: Transport::Tcp,
                    unresolved: false,
                    choose: false,
                    hop: HopAddrs::plain(vec![addr("192.0.2.20:5060"), addr("192.0.2.21:5060")]),
                },
                NamedTrunk {
                    trunk: 3,
                    uri: "sip:proxy.example.net:5070".into(),
                    transport: Transport::Udp,
                    unresolved: false,
                    choose: false,
                    hop: HopAddrs::plain(vec![addr("192.0.2.30:5070")]),
                },
            ]
        );
        // Not found at start: DNS chooses its transport at the first lookup that finds it,
        // where its records may.
        trunks[1].unresolved = true;
        trunks[3].unresolved = true;
        let named = trunk_names(&cfg, &trunks, |uri| !uri.contains(":5070"));
        assert_eq!(
            named.iter().map(|n| n.choose).collect::<Vec<_>>(),
            vec![true, false]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_name_not_found_at_start_gets_its_transport_from_the_first_lookup_that_finds_it() {
        let a: SocketAddr = "192.0.2.10:5060".parse().unwrap();
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let changes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let task = tokio::spawn(refresh_trunk_addrs(
            vec![NamedTrunk {
                trunk: 0,
                uri: "sip:pbx.example.net".into(),
                // The fallback taken at start; DNS may choose otherwise.
                transport: Transport::Udp,
                unresolved: true,
                choose: true,
                hop: HopAddrs::plain(vec![SocketAddr::from(([0, 0, 0, 0], 0))]),
            }],
            Duration::from_secs(60),
            {
                let asked = asked.clone();
                move |_uri: String, over: Option<Transport>| {
                    let n = {
                        let mut asked = asked.lock().unwrap();
                        asked.push(over);
                        asked.len()
                    };
                    async move {
                        match n {
                            1 => Err(anyhow!("SERVFAIL")),
                            // Its NAPTR records choose TCP.
                            _ => Ok((HopAddrs::plain(vec![a]), Transport::Tcp)),
                        }
                    }
                }
            },
            {
                let changes = changes.clone();
                move |trunk: usize, hop: &HopAddrs, transport: Transport| {
                    changes
                        .lock()
                        .unwrap()
                        .push((trunk, hop.addrs.clone(), transport));
                    Taken::Yes
                }
            },
        ));
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        task.abort();
        // Every transport until one lookup found it; that one's transport from then on.
        assert_eq!(
            *asked.lock().unwrap(),
            vec![None, None, Some(Transport::Tcp), Some(Transport::Tcp)]
        );
        assert_eq!(*changes.lock().unwrap(), vec![(0, vec![a], Transport::Tcp)]);
    }

    #[tokio::test(start_paused = true)]
    async fn trunk_names_are_looked_up_every_period_and_only_changes_are_passed_on() {
        let a: SocketAddr = "192.0.2.10:5060".parse().unwrap();
        let b: SocketAddr = "192.0.2.11:5060".parse().unwrap();
        let plain = |a: Vec<SocketAddr>| HopAddrs::plain(a);
        let rank = |priority, target| crate::sip::srv::SrvRank::new(priority, 0, target);
        let ranked = HopAddrs {
            addrs: vec![b, a],
            ranks: vec![rank(20, 0), rank(10, 1)],
        };
        let answers = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::from([
            Ok(plain(vec![a])),
            Err(anyhow!("SERVFAIL")),
            Ok(plain(vec![])),
            Ok(plain(vec![a])),
            Ok(plain(vec![b, a])),
            Ok(plain(vec![b, a])),
            Ok(ranked.clone()),
            Ok(plain(vec![a])),
        ])));
        let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
        let changes = Arc::new(std::sync::Mutex::new(Vec::new()));
        // What the wiring answers, change after change: taken; not taken (TLS settings
        // failed); taken; the engine is gone.
        let mut takes = vec![
            Taken::Yes,
            Taken::No,
            Taken::Yes,
            Taken::Yes,
            Taken::EngineGone,
        ]
        .into_iter();
        let task = tokio::spawn(refresh_trunk_addrs(
            vec![NamedTrunk {
                trunk: 2,
                uri: "sip:pbx.example.net".into(),
                transport: Transport::Tcp,
                unresolved: false,
                choose: false,
                hop: plain(vec![b]),
            }],
            Duration::from_secs(60),
            {
                let (asked, answers) = (asked.clone(), answers.clone());
                move |uri: String, over: Option<Transport>| {
                    assert_eq!(over, Some(Transport::Tcp), "the transport chosen at start");
                    asked.lock().unwrap().push(uri);
                    let answer = answers
                        .lock()
                        .unwrap()
                        .pop_front()
                        .expect("asked too often");
                    async move { answer.map(|hop| (hop, Transport::Tcp)) }
                }
            },
            {
                let changes = changes.clone();
                move |trunk: usize, hop: &HopAddrs, transport: Transport| {
                    assert_eq!(transport, Transport::Tcp);
                    changes.lock().unwrap().push((trunk, hop.clone()));
                    takes.next().expect("called too often")
                }
            },
        ));
        let seen = || std::mem::take(&mut *changes.lock().unwrap());
        let period = || tokio::time::sleep(Duration::from_secs(60));
        // The lookup at start belongs to engine_config; the first refresh is a period later.
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(seen(), vec![]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(seen(), vec![(2, plain(vec![a]))]);
        period().await;
        assert_eq!(seen(), vec![], "a failed lookup keeps the last addresses");
        period().await;
        assert_eq!(seen(), vec![], "so does one that found nothing");
        period().await;
        assert_eq!(seen(), vec![], "the same addresses again are no change");
        period().await;
        assert_eq!(
            seen(),
            vec![(2, plain(vec![b, a]))],
            "an order of its own is a change"
        );
        period().await;
        assert_eq!(
            seen(),
            vec![(2, plain(vec![b, a]))],
            "not taken: offered again"
        );
        period().await;
        assert_eq!(
            seen(),
            vec![(2, ranked)],
            "the same addresses with SRV ranks are a change"
        );
        assert!(!task.is_finished());
        period().await;
        assert_eq!(seen(), vec![(2, plain(vec![a]))]);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(task.is_finished(), "ends once the engine is gone");
        task.await.expect("ended, not panicked");
        assert_eq!(asked.lock().unwrap().len(), 8);
        assert!(asked
            .lock()
            .unwrap()
            .iter()
            .all(|u| u == "sip:pbx.example.net"));
    }

    /// A temporary folder holding `ca.pem`, a self-signed certificate for a.example.
    fn dir_with_a_ca(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "riptide-gw-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ca = rcgen::CertificateParams::new(vec!["a.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        dir
    }

    /// Trunks trusting `dir`'s `ca.pem`: `a` over TLS at 127.0.0.1:5061 (server name
    /// a.example), `b` over TLS at `b_target` (server name `b_name`), and `plain` over UDP.
    fn tls_trunks(dir: &std::path::Path, b_target: &str, b_name: &str) -> Config {
        let text = format!(
            "[[sip_trunk]]\nname = \"a\"\ntarget = \"sip:127.0.0.1:5061;transport=tls\"\n\
             tls_ca = \"ca.pem\"\ntls_server_name = \"a.example\"\n\
             [[sip_trunk]]\nname = \"b\"\ntarget = \"{b_target}\"\n\
             tls_ca = \"ca.pem\"\ntls_server_name = \"{b_name}\"\n\
             [[sip_trunk]]\nname = \"plain\"\ntarget = \"sip:127.0.0.1:5061\"\n"
        );
        let mut cfg = crate::config::load_str(&text, "t.toml").unwrap();
        cfg.base_dir = dir.to_path_buf();
        cfg
    }

    #[tokio::test]
    async fn new_tls_trunk_addresses_get_their_settings_first_or_are_not_taken() {
        let dir = dir_with_a_ca("taker");
        let cfg = tls_trunks(&dir, "sip:127.0.0.2:5061;transport=tls", "b.example");
        let ecfg = engine_config(&cfg, &system_dns(), &[], "x", "fp")
            .await
            .unwrap();
        let (sip_tx, _sip_rx) = mpsc::channel(16);
        let listeners = Listeners {
            udp: vec!["127.0.0.1:0".parse().unwrap()],
            tcp: vec![],
            tls: vec![],
            tls_acceptor: None,
        };
        let sip = transport::start(listeners, sip_tx, Arc::new(Metrics::default()))
            .await
            .unwrap();
        sip.set_tls_peers(sip_tls_peers(&cfg, &ecfg.trunks).unwrap());
        let (engine, mut told) = mpsc::unbounded_channel();
        let mut taker = TrunkAddrTaker {
            cfg,
            trunks: ecfg.trunks,
            sip: sip.clone(),
            engine,
        };
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let name_at = |a: &str| {
            sip.tls_peer(addr(a))
                .map(|c| c.server_name.to_str().into_owned())
        };
        let told_now = |told: &mut mpsc::UnboundedReceiver<Input>| match told.try_recv() {
            Ok(Input::TrunkAddrs { trunk, hop, .. }) => Some((trunk, hop.addrs)),
            Ok(other) => panic!("{other:?}"),
            Err(_) => None,
        };

        // Taken: the new address has a's settings, the old one keeps them, the engine is told.
        let new = [addr("127.0.0.3:5061"), addr("127.0.0.1:5061")];
        assert_eq!(
            taker.take(0, &HopAddrs::plain(new.to_vec()), Transport::Tls),
            Taken::Yes
        );
        assert_eq!(name_at("127.0.0.3:5061").as_deref(), Some("a.example"));
        assert_eq!(name_at("127.0.0.1:5061").as_deref(), Some("a.example"));
        assert_eq!(told_now(&mut told), Some((0, new.to_vec())));
        let moved = [addr("127.0.0.4:5061")];
        assert_eq!(
            taker.take(0, &HopAddrs::plain(moved.to_vec()), Transport::Tls),
            Taken::Yes
        );
        assert_eq!(
            name_at("127.0.0.3:5061").as_deref(),
            Some("a.example"),
            "a call under way may still use an address the name no longer has"
        );
        told_now(&mut told);

        // b's address with a's settings would mix them up: not taken, the engine is not told,
        // and b keeps its settings there.
        assert_eq!(
            taker.take(
                0,
                &HopAddrs::plain(vec![addr("127.0.0.2:5061")]),
                Transport::Tls
            ),
            Taken::No
        );
        assert_eq!(told_now(&mut told), None);
        assert_eq!(name_at("127.0.0.2:5061").as_deref(), Some("b.example"));

        // A UDP trunk needs no TLS settings; no addresses at all are never taken.
        assert_eq!(
            taker.take(
                2,
                &HopAddrs::plain(vec![addr("127.0.0.5:5061")]),
                Transport::Udp
            ),
            Taken::Yes
        );
        assert!(told_now(&mut told).is_some());
        assert_eq!(
            taker.take(2, &HopAddrs::plain(vec![]), Transport::Udp),
            Taken::No
        );
        assert_eq!(
            taker.take(
                9,
                &HopAddrs::plain(vec![addr("127.0.0.5:5061")]),
                Transport::Tls
            ),
            Taken::No
        );

        drop(told);
        assert_eq!(
            taker.take(
                0,
                &HopAddrs::plain(vec![addr("127.0.0.6:5061")]),
                Transport::Tls
            ),
            Taken::EngineGone
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A test STI PKI in a temporary folder: `root.pem`, the CRL `signer.pem`, and the CRLs
    /// `revoking.crl` (the leaf), `empty.crl` and `garbage.crl` (not a CRL); a PASSporT signed
    /// by the leaf.
    struct StirPki {
        dir: std::path::PathBuf,
        pki: crate::stir::TestPki,
        now: u64,
        identity: String,
    }

    impl StirPki {
        fn new(tag: &str) -> StirPki {
            let now = unix_now();
            let pki = crate::stir::TestPki::generate("1234", now).unwrap();
            let dir = std::env::temp_dir().join(format!("riptide-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let pem = |der: &[u8]| crate::stir::testpki::pem_block("X509 CRL", der);
            std::fs::write(dir.join("root.pem"), &pki.root.pem).unwrap();
            std::fs::write(dir.join("signer.pem"), &pki.crl_signer.pem).unwrap();
            let revoking = pki.crl(&[&pki.leaf.serial], now - 60, now + 3600).unwrap();
            std::fs::write(dir.join("revoking.crl"), pem(&revoking)).unwrap();
            let empty = pki.crl(&[], now - 60, now + 3600).unwrap();
            std::fs::write(dir.join("empty.crl"), pem(&empty)).unwrap();
            std::fs::write(dir.join("garbage.crl"), "not a CRL").unwrap();
            let claims = crate::stir::ShakenClaims {
                attest: crate::stir::Attestation::A,
                dest_tns: vec!["12155551213".into()],
                iat: now,
                orig_tn: "12155551212".into(),
                origid: "o".into(),
            };
            let x5u = "https://cert.example.net/sp.pem";
            let identity =
                crate::stir::verify::sign(&claims, &pki.signing_key().unwrap(), x5u).unwrap();
            StirPki {
                dir,
                pki,
                now,
                identity,
            }
        }

        /// Verification that rejects, trusting `root.pem` and the CRL file `crl`.
        fn config(&self, crl: &str) -> Config {
            let text = format!(
                "[stir]\nverify = \"reject\"\ntrust_anchors = \"root.pem\"\nx5u_ca = \"root.pem\"\n\
                 crls = [{{ crl = \"{crl}\", signer = \"signer.pem\" }}]\n"
            );
            let mut cfg = crate::config::load_str(&text, "t.toml").unwrap();
            cfg.base_dir = self.dir.clone();
            cfg
        }

        /// The status the PASSporT fails with (`None`: it passed).
        fn status(&self, v: &crate::bridge::engine::StirVerify) -> Option<u16> {
            let ctx = crate::stir::verify::VerifyContext {
                now_unix: self.now,
                canonical_orig: Some("12155551212".into()),
                canonical_dest: vec!["12155551213".into()],
                call_id: "c".into(),
            };
            let mut replay = crate::stir::verify::ReplayCache::default();
            let prepared = v.verifier.prepare(&[self.identity.as_str()], &ctx, &replay);
            let chain = self.pki.chain();
            v.verifier
                .finish(prepared, &mut replay, |_| Ok::<_, String>(chain.clone()))
                .code
                .map(|c| c.status())
        }

        fn copy(&self, from: &str, to: &str) {
            std::fs::copy(self.dir.join(from), self.dir.join(to)).unwrap();
        }
    }

    impl Drop for StirPki {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }

    /// `[stir] crls` reaches the verifier: a CRL revoking our test leaf makes its PASSporT
    /// fail with 437, an empty one does not, and a CRL that is not one is a start-up error
    /// naming the key.
    #[test]
    fn stir_crls_from_the_config_revoke_certificates() {
        let f = StirPki::new("crl");
        let verifier = |crl: &str| stir_verifier(&f.config(crl)).unwrap().unwrap();
        assert_eq!(f.status(&verifier("empty.crl")), None);
        assert_eq!(f.status(&verifier("revoking.crl")), Some(437));
        let err = format!("{:#}", stir_verifier(&f.config("garbage.crl")).unwrap_err());
        assert!(
            err.contains("stir.crls") && err.contains("garbage.crl"),
            "{err}"
        );
    }

    /// A reload (SIGHUP, `POST /reload`) gives the running verifier a new CRL: the leaf it
    /// revokes fails from then on. A file that does not load fails the reload, names the file,
    /// and the CRL in use stays; a missing trust list too.
    #[test]
    fn a_reload_replaces_the_stir_crls_all_or_nothing() {
        let f = StirPki::new("crl-reload");
        f.copy("empty.crl", "live.crl");
        let cfg = f.config("live.crl");
        let v = stir_verifier(&cfg).unwrap().unwrap();
        let reloader = Reloader {
            certs: Arc::new(tls::CertReloader::default()),
            stir: StirFiles::from_config(&cfg).map(|files| (files, v.clone())),
        };
        assert_eq!(f.status(&v), None);

        f.copy("revoking.crl", "live.crl");
        let lines = reloader.reload().unwrap();
        assert_eq!(
            lines,
            ["stir: now 1 trust anchor(s), CRL live.crl: 1 revoked, current"]
        );
        assert_eq!(f.status(&v), Some(437));

        f.copy("garbage.crl", "live.crl");
        let lines = reloader.reload().unwrap_err();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "stir: reload failed, keeping 1 trust anchor(s), CRL live.crl: 1 revoked, current: stir.crls "
            ) && lines[0].contains("live.crl (signer "),
            "{lines:?}"
        );
        assert_eq!(f.status(&v), Some(437), "the CRL in use stays");

        f.copy("empty.crl", "live.crl");
        std::fs::remove_file(f.dir.join("root.pem")).unwrap();
        let lines = reloader.reload().unwrap_err();
        assert!(lines[0].contains("stir.trust_anchors"), "{lines:?}");
        assert_eq!(f.status(&v), Some(437), "nothing is replaced");

        std::fs::write(f.dir.join("root.pem"), &f.pki.root.pem).unwrap();
        assert_eq!(
            reloader.reload().unwrap(),
            ["stir: now 1 trust anchor(s), CRL live.crl: 0 revoked, current"]
        );
        assert_eq!(f.status(&v), None);
    }

    /// The digest keys of a `[[sip_trunk]]` become its user database and our login:
    /// passwords from files lose their line ending, HA1-only users limit the algorithms.
    #[test]
    fn digest_keys_reach_the_trunk() {
        use crate::sip::digest::{self, Algorithm, Check, Login, Server};
        let dir = std::env::temp_dir().join(format!("riptide-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bob.pass"), "bob pw\r\n").unwrap();
        std::fs::write(dir.join("trunk.pass"), "trunk-pw\n").unwrap();
        let text = format!(
            "[sip]\ndigest_realm = \"gw\"\n[[sip_trunk]]\nname = \"pbx\"\ntarget = \"sip:127.0.0.1:5080\"\n\
             match_sources = [\"127.0.0.1\"]\nauth = \"digest\"\nusers = [\n  \
             {{ name = \"bob\", password_file = \"bob.pass\" }},\n  \
             {{ name = \"old\", ha1_md5 = \"{}\" }},\n]\n\
             username = \"riptide\"\npassword_file = \"trunk.pass\"\n",
            digest::ha1(Algorithm::Md5, "old", "gw", "x")
        );
        let mut cfg = crate::config::load_str(&text, "t.toml").unwrap();
        cfg.base_dir = dir.clone();
        let t = &cfg.sip_trunks[0];
        let db = digest_users(&cfg, t).unwrap().expect("digest users");
        assert_eq!(db.realm(), "gw");
        assert_eq!(db.offered(), &[Algorithm::Md5]);
        let mut server = Server::new(b"k");
        let ip = "127.0.0.1".parse().unwrap();
        let chs = server.challenges(&db, 0, ip, false);
        let creds = |pw: &str| {
            digest::answer(
                &chs[0],
                Algorithm::Md5,
                &Login::new("bob", pw),
                "INVITE",
                "sip:a@b",
                "c",
                1,
            )
        };
        assert!(matches!(
            server.check(&db, &creds("bob pw"), "INVITE", 0, ip),
            Check::Ok { .. }
        ));
        let login = digest_login(&cfg, t).unwrap().expect("our login");
        assert_eq!(*login, Login::new("riptide", "trunk-pw"));
        // No digest keys: nothing; a missing password file: a start-up error naming it.
        let plain = crate::config::load_str(
            "[[sip_trunk]]\nname = \"p\"\ntarget = \"sip:127.0.0.1:5080\"\n",
            "t",
        )
        .unwrap();
        assert!(digest_users(&plain, &plain.sip_trunks[0])
            .unwrap()
            .is_none());
        assert!(digest_login(&plain, &plain.sip_trunks[0])
            .unwrap()
            .is_none());
        std::fs::remove_file(dir.join("trunk.pass")).unwrap();
        let e = format!("{:#}", digest_login(&cfg, t).unwrap_err());
        assert!(
            e.contains("sip_trunk pbx") && e.contains("trunk.pass"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Trunks reached over TLS get client settings by address; two at one address must agree
    /// on them, since they share connections.
    #[tokio::test]
    async fn tls_trunks_sharing_an_address_must_agree() {
        let dir = dir_with_a_ca("tls-peers");
        let trunks = |second_name: &str| tls_trunks(&dir, "sips:127.0.0.1", second_name);
        let cfg = trunks("a.example");
        let ecfg = engine_config(&cfg, &system_dns(), &[], "x", "fp")
            .await
            .unwrap();
        let peers = sip_tls_peers(&cfg, &ecfg.trunks).unwrap();
        assert_eq!(peers.len(), 1, "one address, over TLS once: {peers:?}");
        let p = &peers[&"127.0.0.1:5061".parse().unwrap()];
        assert_eq!(p.server_name.to_str(), "a.example");

        // Every address of a trunk's name is reached with its settings (a failover, or what a
        // later lookup found); one of them shared with a trunk of other settings is refused.
        let mut ecfg = engine_config(&cfg, &system_dns(), &[], "x", "fp")
            .await
            .unwrap();
        ecfg.trunks[0].alternates = vec!["127.0.0.2:5061".parse().unwrap()];
        let peers = sip_tls_peers(&cfg, &ecfg.trunks).unwrap();
        assert_eq!(peers.len(), 2, "{peers:?}");
        let p = &peers[&"127.0.0.2:5061".parse().unwrap()];
        assert_eq!(p.server_name.to_str(), "a.example");
        let clash = trunks("b.example");
        let mut ecfg = engine_config(&clash, &system_dns(), &[], "x", "fp")
            .await
            .unwrap();
        ecfg.trunks[1].dest.addr = "127.0.0.3:5061".parse().unwrap();
        ecfg.trunks[1].alternates = vec!["127.0.0.1:5061".parse().unwrap()];
        let err = sip_tls_peers(&clash, &ecfg.trunks).unwrap_err().to_string();
        assert!(err.contains("127.0.0.1:5061"), "{err}");

        let cfg = trunks("b.example");
        let ecfg = engine_config(&cfg, &system_dns(), &[], "x", "fp")
            .await
            .unwrap();
        let err = sip_tls_peers(&cfg, &ecfg.trunks).unwrap_err().to_string();
        assert!(
            err.contains("sip_trunk b and sip_trunk a") && err.contains("127.0.0.1:5061"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
