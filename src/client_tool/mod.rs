//! `riptide call` and `riptide answer`: command-line RIPT clients. `call` places one call over
//! HTTP/3; `answer` registers a handler and answers the calls offered to it (protocol.md §2.7).
//! Both play a WAV file into the call, record what comes back and print the call's statistics.
//!
//! They reuse the gateway's own client role: [`spawn_client`] does `POST {TG}/calls` (or the
//! handler registration and the take), the events streams and the `{call}/media` CONNECT; the
//! [`MediaHub`] carries the RTP between a loopback UDP socket of this tool and the call's HTTP
//! datagrams, exactly as it does for a SIP caller's RTP. The tool itself is then a small RTP
//! endpoint (`run`): PCMU 8 kHz, 20 ms packets.

pub mod answer;
pub mod g711;
mod run;
pub mod stats;
pub mod wav;

use crate::config::{self, Config, MediaConfig, RiptPeerConfig};
use crate::media::dtmf::Digit;
use crate::media::{MediaCmd, MediaEvent, MediaHub};
use crate::metrics::Metrics;
use crate::ript::client::{spawn_client, ClientCtx, ClientHandle, PeerRuntime};
use crate::ript::model::{Advertisement, CallRequest, CodecAd};
use crate::ript::{RiptCmd, RiptEvent};
use crate::CallKey;
use anyhow::anyhow;
use run::{MediaLeg, Role, Run, RunSetup, DTMF_MS, FRAME, PTIME};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The one call `riptide call` places.
const CALL: CallKey = CallKey(1);

/// What `riptide call` was asked to do.
#[derive(Debug, Clone)]
pub struct CallOptions {
    /// Gateway configuration whose `[[ript_peer]]` names the server and the token.
    pub config: PathBuf,
    /// Which `[[ript_peer]]`; default the first.
    pub peer: Option<String>,
    /// `sip:user@host`, `tel:+1...`, or a bare number or user.
    pub target: String,
    pub play: PathBuf,
    pub record: Option<PathBuf>,
    /// Seconds of media to send; default the play file's length.
    pub duration: Option<f64>,
    /// DTMF keys to send (RFC 4733) after the answer.
    pub dtmf: Option<String>,
    /// Keep a progress line on stderr.
    pub progress: bool,
}

/// Why no call could be placed.
#[derive(Debug)]
pub enum CallError {
    /// Bad arguments, configuration, or play file.
    Config(String),
    /// The peer answered the `POST` with an error status.
    Refused { status: u16, reason: String },
    /// The peer could not be reached (connection or TLS failure, timeout).
    Unreachable(String),
    /// The peer refused to register our handler (`riptide answer`).
    Registration { status: u16, reason: String },
    /// A local failure (sockets, runtime).
    Local(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Config(e) => write!(f, "{e}"),
            CallError::Refused { status, reason } => write!(f, "call refused: {status} {reason}"),
            CallError::Unreachable(e) => write!(f, "peer unreachable: {e}"),
            CallError::Registration { status, reason } => {
                write!(f, "handler registration refused: {status} {reason}")
            }
            CallError::Local(e) => write!(f, "{e}"),
        }
    }
}

/// What happened to a call that the peer created.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub destination: String,
    pub peer: String,
    /// The calling party, when the peer told us (calls we answered).
    pub from: Option<String>,
    /// `call`: `POST` to `answered` received. `answer`: `incoming` received to `answered`
    /// sent (so it includes the take and any `--ring`).
    pub setup: Option<Duration>,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub expected: u64,
    pub lost: u64,
    pub jitter_ms: f64,
    pub dtmf_sent: String,
    /// Keys received as RFC 4733 telephone-events in the media.
    pub dtmf_received: String,
    /// Furthest state the call reached (`proceeding`, `alerting`, `answered`, or how it was
    /// refused: `declined`, `failed`, `noanswer`).
    pub state: String,
    /// How it ended, e.g. `ended by us (Q.850;cause=16;...)`, `ended by the caller (...)` or
    /// `declined 486 Busy Here`.
    pub end: String,
    /// Answered and ended normally.
    pub success: bool,
}

impl Summary {
    /// Loss in percent of the packets expected from the sequence numbers received.
    pub fn loss_percent(&self) -> f64 {
        if self.expected == 0 {
            return 0.0;
        }
        100.0 * self.lost as f64 / self.expected as f64
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "destination:      {} via {}",
            self.destination, self.peer
        )?;
        if let Some(from) = &self.from {
            writeln!(f, "caller:           {from}")?;
        }
        match self.setup {
            Some(s) => writeln!(f, "setup time:       {:.1} ms", s.as_secs_f64() * 1000.0)?,
            None => writeln!(f, "setup time:       - (not answered)")?,
        }
        writeln!(f, "packets sent:     {}", self.packets_sent)?;
        writeln!(f, "packets received: {}", self.packets_received)?;
        if self.expected == 0 {
            writeln!(f, "loss:             - (nothing received)")?;
        } else {
            writeln!(
                f,
                "loss:             {:.1} % ({} of {})",
                self.loss_percent(),
                self.lost,
                self.expected
            )?;
        }
        writeln!(f, "jitter:           {:.2} ms", self.jitter_ms)?;
        if !self.dtmf_sent.is_empty() {
            writeln!(f, "dtmf sent:        {}", self.dtmf_sent)?;
        }
        if !self.dtmf_received.is_empty() {
            writeln!(f, "dtmf received:    {}", self.dtmf_received)?;
        }
        writeln!(f, "reached:          {}", self.state)?;
        write!(f, "end:              {}", self.end)
    }
}

/// The destination sent in `POST {TG}/calls`: the user part of a `sip:`/`sips:` URI, the
/// number of a `tel:` URI, or a bare number or user (the user part of `user@host`).
pub fn destination(target: &str) -> Result<String, String> {
    let t = target.trim();
    let lower = t.to_ascii_lowercase();
    let dest = if lower.starts_with("tel:") {
        t[4..].split(';').next().unwrap_or("")
    } else {
        let rest = if lower.starts_with("sips:") {
            &t[5..]
        } else if lower.starts_with("sip:") {
            &t[4..]
        } else {
            t
        };
        match rest.split_once('@') {
            Some((user, _)) => user.split(';').next().unwrap_or(""),
            None if rest.len() < t.len() => {
                return Err(format!("{target}: a SIP URI needs a user part (user@host)"))
            }
            None => rest,
        }
    };
    if dest.is_empty() || dest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{target}: no usable destination in it"));
    }
    Ok(dest.to_string())
}

/// The DTMF keys of `--dtmf`.
pub fn dtmf_digits(s: &str) -> Result<Vec<Digit>, String> {
    s.chars()
        .map(|c| Digit::new(c, DTMF_MS).map_err(|_| format!("--dtmf: {c:?} is not a DTMF key")))
        .collect()
}

/// The peer `name` (default: the first `[[ript_peer]]`) of a configuration, ready to call.
pub async fn peer_runtime(cfg: &Config, name: Option<&str>) -> anyhow::Result<PeerRuntime> {
    let p: &RiptPeerConfig = match name {
        Some(n) => cfg
            .ript_peers
            .iter()
            .find(|p| p.name == n)
            .ok_or_else(|| anyhow!("no [[ript_peer]] named {n:?}"))?,
        None => cfg
            .ript_peers
            .first()
            .ok_or_else(|| anyhow!("the configuration has no [[ript_peer]]"))?,
    };
    crate::gateway::peer_runtime(cfg, p).await
}

/// The advertisement both tools send: what their RTP endpoint handles.
pub fn tool_advertisement() -> Advertisement {
    Advertisement {
        codecs: vec![
            CodecAd {
                packet_time: Some(20),
                ..CodecAd::named("PCMU")
            },
            CodecAd {
                packet_time: Some(20),
                parameters: Some("0-15".into()),
                ..CodecAd::named("telephone-event")
            },
        ],
    }
}

/// The samples of a play file, at least one packet long.
fn read_play(path: &Path) -> Result<Vec<i16>, CallError> {
    let play = wav::read(path).map_err(CallError::Config)?;
    if play.len() < FRAME {
        return Err(CallError::Config(format!(
            "{}: shorter than one 20 ms packet",
            path.display()
        )));
    }
    Ok(play)
}

/// A duration option in seconds (`--duration`, `--ring`): finite, not negative, under a day;
/// zero only where `zero_ok`.
pub fn seconds_option(name: &str, s: f64, zero_ok: bool) -> Result<Duration, String> {
    if s.is_finite() && (s > 0.0 || (zero_ok && s == 0.0)) && s < 86400.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(format!("{name} {s}: out of range"))
    }
}

/// What both tools set up once per process: the peer, the media hub and the HTTP/3 client.
struct Tool {
    peer_label: String,
    /// The peer's trunk group.
    tg: String,
    hub: MediaHub,
    media_rx: mpsc::UnboundedReceiver<MediaEvent>,
    endpoint: quinn::Endpoint,
    client: ClientHandle,
    cmds: mpsc::UnboundedSender<RiptCmd>,
    events: mpsc::Receiver<RiptEvent>,
}

impl Tool {
    async fn start(config_path: &Path, peer: Option<&str>) -> Result<Tool, CallError> {
        let cfg = config::load_file(config_path).map_err(|e| CallError::Config(e.to_string()))?;
        let peer = peer_runtime(&cfg, peer)
            .await
            .map_err(|e| CallError::Config(format!("{}: {e:#}", config_path.display())))?;
        let peer_label = format!("{} ({}, TG {})", peer.name, peer.addr, peer.tg);
        let tg = peer.tg.clone();
        // Media: the hub's "legacy" sockets and ours, all on loopback.
        let media_cfg = MediaConfig {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            latching: false,
            ..cfg.media.clone()
        };
        let metrics = Arc::new(Metrics::default());
        let (media_tx, media_rx) = mpsc::unbounded_channel();
        let hub = MediaHub::new(&media_cfg, metrics.clone(), media_tx);
        let bind = match peer.addr {
            SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0),
        };
        let endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| CallError::Local(format!("QUIC socket: {e}")))?;
        let (ev_tx, events) = mpsc::channel(256);
        let client = spawn_client(
            endpoint.clone(),
            ClientCtx {
                peers: vec![peer],
                media: hub.clone(),
                metrics,
                events: ev_tx,
            },
        );
        Ok(Tool {
            peer_label,
            tg,
            hub,
            media_rx,
            endpoint,
            cmds: client.cmd_sender(),
            client,
            events,
        })
    }

    /// The hub's loopback leg for `call`, sending to a new socket of ours.
    async fn open_media(&mut self, call: CallKey) -> Result<MediaLeg, CallError> {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        self.hub.apply(MediaCmd::OpenLegacy { call, port: 0 });
        while let Ok(ev) = self.media_rx.try_recv() {
            if let MediaEvent::BindFailed { reason, .. } = ev {
                return Err(CallError::Local(format!("media socket: {reason}")));
            }
        }
        let hub_addr = self
            .hub
            .legacy_addr(call)
            .ok_or_else(|| CallError::Local("media socket not bound".into()))?;
        let sock = UdpSocket::bind(SocketAddr::new(loopback, 0))
            .await
            .map_err(|e| CallError::Local(format!("RTP socket: {e}")))?;
        let rtp = sock
            .local_addr()
            .map_err(|e| CallError::Local(format!("RTP socket: {e}")))?;
        self.hub.apply(MediaCmd::SetRemote {
            call,
            rtp,
            rtcp: None,
            rtcp_mux: true,
            latching: false,
        });
        self.hub.apply(MediaCmd::SetCodec {
            call,
            clock_rate: 8000,
            dtmf_pt: Some(101),
            dtmf_as_info: false,
        });
        Ok(MediaLeg { sock, hub_addr })
    }

    /// Runs one call on its media leg: see [`Run`].
    async fn run_call(&mut self, setup: RunSetup) -> (Run, Result<Summary, CallError>) {
        let mut run = Run::new(setup);
        let result = run.run(&mut self.events, &mut self.media_rx).await;
        (run, result)
    }

    /// Closes the call's streams and media.
    fn close_call(&self, call: CallKey) {
        let _ = self.cmds.send(RiptCmd::ClientClose { call });
        self.hub.apply(MediaCmd::Close { call });
    }

    async fn shutdown(self) {
        // Let the PUT streams carry their closing `]` before the connection goes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.client.abort();
        // RFC 9114 §8.1: H3_NO_ERROR, the connection is closed with nothing wrong.
        self.endpoint.close(0x100u32.into(), b"done");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Places the call and runs it to its end. `Err` means no call was created.
pub async fn call(opts: CallOptions) -> Result<Summary, CallError> {
    let destination = destination(&opts.target).map_err(CallError::Config)?;
    let play = read_play(&opts.play)?;
    let digits = match &opts.dtmf {
        Some(s) => dtmf_digits(s).map_err(CallError::Config)?,
        None => Vec::new(),
    };
    let duration = match opts.duration {
        Some(d) => seconds_option("--duration", d, false).map_err(CallError::Config)?,
        None => Duration::from_millis(play.len() as u64 * 1000 / u64::from(wav::RATE)),
    };
    let mut tool = Tool::start(&opts.config, opts.peer.as_deref()).await?;
    let leg = tool.open_media(CALL).await?;
    let setup = RunSetup {
        role: Role::Caller {
            frames: (duration.as_millis() / PTIME.as_millis()) as u64,
        },
        key: CALL,
        cmds: tool.cmds.clone(),
        hub: tool.hub.clone(),
        leg,
        play,
        digits,
        record: opts.record.is_some(),
        progress: opts.progress,
        summary: Summary {
            destination: destination.clone(),
            peer: tool.peer_label.clone(),
            state: "connecting".into(),
            ..Summary::default()
        },
        started: Instant::now(),
    };
    let request = CallRequest {
        destination,
        advertisement: Some(tool_advertisement()),
        ..CallRequest::default()
    };
    let _ = tool.cmds.send(RiptCmd::CreateCall {
        call: CALL,
        peer: 0,
        request,
    });
    let (run, result) = tool.run_call(setup).await;
    tool.close_call(CALL);
    tool.shutdown().await;
    let summary = result?;
    if let Some(path) = &opts.record {
        wav::write(path, &run.recorded).map_err(CallError::Local)?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_from_targets() {
        assert_eq!(destination("sip:answer@127.0.0.1").unwrap(), "answer");
        assert_eq!(destination("SIPS:bob;x=1@h:5061").unwrap(), "bob");
        assert_eq!(
            destination("tel:+14085551212;phone-context=x").unwrap(),
            "+14085551212"
        );
        assert_eq!(destination("echo").unwrap(), "echo");
        assert_eq!(destination("+441234").unwrap(), "+441234");
        assert_eq!(destination("alice@example.com").unwrap(), "alice");
        assert!(destination("sip:127.0.0.1").is_err());
        assert!(destination("tel:").is_err());
        assert!(destination("").is_err());
    }

    #[test]
    fn dtmf_keys_are_checked() {
        let d = dtmf_digits("12a#").unwrap();
        let keys: String = d.iter().map(|d| d.digit).collect();
        assert_eq!(keys, "12A#");
        assert!(dtmf_digits("1x").unwrap_err().contains("'x'"));
    }

    #[test]
    fn summary_reports_loss_and_setup() {
        let s = Summary {
            destination: "echo".into(),
            peer: "self".into(),
            setup: Some(Duration::from_millis(42)),
            packets_sent: 150,
            packets_received: 147,
            expected: 150,
            lost: 3,
            jitter_ms: 0.5,
            state: "answered".into(),
            end: "ended by us".into(),
            success: true,
            ..Summary::default()
        };
        let text = s.to_string();
        assert!(text.contains("setup time:       42.0 ms"), "{text}");
        assert!(text.contains("packets received: 147"), "{text}");
        assert!(
            text.contains("loss:             2.0 % (3 of 150)"),
            "{text}"
        );
    }

    #[test]
    fn seconds_options_are_bounded() {
        assert_eq!(seconds_option("--ring", 0.0, true), Ok(Duration::ZERO));
        assert_eq!(
            seconds_option("--duration", 1.5, false),
            Ok(Duration::from_millis(1500))
        );
        for (s, zero_ok) in [
            (0.0, false),
            (-1.0, true),
            (f64::NAN, true),
            (86400.0, true),
        ] {
            let e = seconds_option("--duration", s, zero_ok).unwrap_err();
            assert!(
                e.starts_with("--duration") && e.ends_with("out of range"),
                "{e}"
            );
        }
    }

    #[test]
    fn an_answered_call_names_its_caller() {
        let s = Summary {
            destination: "web".into(),
            peer: "gw".into(),
            from: Some("+12155551212".into()),
            ..Summary::default()
        };
        let text = s.to_string();
        assert!(text.contains("caller:           +12155551212\n"), "{text}");
        assert!(!Summary::default().to_string().contains("caller:"));
    }
}
