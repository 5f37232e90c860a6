//! `riptide call`: a command-line RIPT client that places one call over HTTP/3, plays a WAV
//! file into it, records what comes back and prints the call's statistics.
//!
//! It reuses the gateway's own client role: [`spawn_client`] does `POST {TG}/calls`, the
//! events streams and the `{call}/media` CONNECT; the [`MediaHub`] carries the RTP between a
//! loopback UDP socket of this tool and the call's HTTP datagrams, exactly as it does for a
//! SIP caller's RTP. The tool itself is then a small RTP endpoint: PCMU 8 kHz, 20 ms packets.

pub mod g711;
pub mod stats;
pub mod wav;

use crate::config::{self, Config, MediaConfig, RiptPeerConfig};
use crate::media::dtmf::{Digit, DigitDetector};
use crate::media::rtp::{self, PacketKind};
use crate::media::{MediaCmd, MediaEvent, MediaHub};
use crate::metrics::Metrics;
use crate::ript::client::{spawn_client, ClientCtx, PeerRuntime};
use crate::ript::model::{
    Advertisement, CallRequest, CodecAd, Direction, Event, EventName, Reason,
};
use crate::ript::{RiptCmd, RiptEvent};
use crate::CallKey;
use anyhow::anyhow;
use stats::RecvStats;
use std::collections::VecDeque;
use std::fmt;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Samples in one 20 ms PCMU packet.
const FRAME: usize = 160;
const PTIME: Duration = Duration::from_millis(20);
/// How long a call may take to be answered.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// After the last packet is sent, how long to keep listening before hanging up (echoes and
/// late packets still count).
const TAIL: Duration = Duration::from_millis(300);
/// How long to wait for the far side to confirm the end of the call.
const END_WAIT: Duration = Duration::from_secs(5);
/// Gap before the first DTMF key after the answer, and between keys.
const DTMF_GAP: Duration = Duration::from_millis(300);
const DTMF_MS: u32 = 100;
const PING_EVERY: Duration = Duration::from_secs(5);
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// Events-stream re-opens tolerated before the call is given up.
const MAX_REOPENS: u32 = 3;
/// The one call this process places.
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
    /// A local failure (sockets, runtime).
    Local(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Config(e) => write!(f, "{e}"),
            CallError::Refused { status, reason } => write!(f, "call refused: {status} {reason}"),
            CallError::Unreachable(e) => write!(f, "peer unreachable: {e}"),
            CallError::Local(e) => write!(f, "{e}"),
        }
    }
}

/// What happened to a call that the peer created.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub destination: String,
    pub peer: String,
    /// `POST` to `answered`.
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
    /// How it ended, e.g. `ended by us (Q.850;cause=16;...)` or `declined 486 Busy Here`.
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
        match self.setup {
            Some(s) => writeln!(f, "setup time:       {} ms", s.as_millis())?,
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

/// Places the call and runs it to its end. `Err` means no call was created.
pub async fn call(opts: CallOptions) -> Result<Summary, CallError> {
    let destination = destination(&opts.target).map_err(CallError::Config)?;
    let play = wav::read(&opts.play).map_err(CallError::Config)?;
    if play.len() < FRAME {
        return Err(CallError::Config(format!(
            "{}: shorter than one 20 ms packet",
            opts.play.display()
        )));
    }
    let digits = match &opts.dtmf {
        Some(s) => dtmf_digits(s).map_err(CallError::Config)?,
        None => Vec::new(),
    };
    let duration = match opts.duration {
        Some(d) if d.is_finite() && d > 0.0 && d < 86400.0 => Duration::from_secs_f64(d),
        Some(d) => return Err(CallError::Config(format!("--duration {d}: out of range"))),
        None => Duration::from_millis(play.len() as u64 * 1000 / u64::from(wav::RATE)),
    };
    let cfg = config::load_file(&opts.config).map_err(|e| CallError::Config(e.to_string()))?;
    let peer = peer_runtime(&cfg, opts.peer.as_deref())
        .await
        .map_err(|e| CallError::Config(format!("{}: {e:#}", opts.config.display())))?;
    let peer_label = format!("{} ({}, TG {})", peer.name, peer.addr, peer.tg);

    // Media: the hub's "legacy" socket and ours, both on loopback.
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let media_cfg = MediaConfig {
        ip: loopback,
        latching: false,
        ..cfg.media.clone()
    };
    let metrics = Arc::new(Metrics::default());
    let (media_tx, mut media_rx) = mpsc::unbounded_channel();
    let hub = MediaHub::new(&media_cfg, metrics.clone(), media_tx);
    hub.apply(MediaCmd::OpenLegacy {
        call: CALL,
        port: 0,
    });
    if let Ok(MediaEvent::BindFailed { reason, .. }) = media_rx.try_recv() {
        return Err(CallError::Local(format!("media socket: {reason}")));
    }
    let hub_addr = hub
        .legacy_addr(CALL)
        .ok_or_else(|| CallError::Local("media socket not bound".into()))?;
    let sock = UdpSocket::bind(SocketAddr::new(loopback, 0))
        .await
        .map_err(|e| CallError::Local(format!("RTP socket: {e}")))?;
    let local = sock
        .local_addr()
        .map_err(|e| CallError::Local(format!("RTP socket: {e}")))?;
    hub.apply(MediaCmd::SetRemote {
        call: CALL,
        rtp: local,
        rtcp: None,
        rtcp_mux: true,
        latching: false,
    });
    hub.apply(MediaCmd::SetCodec {
        call: CALL,
        clock_rate: 8000,
        dtmf_pt: Some(101),
        dtmf_as_info: false,
    });

    let bind = match peer.addr {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0),
    };
    let endpoint =
        quinn::Endpoint::client(bind).map_err(|e| CallError::Local(format!("QUIC socket: {e}")))?;
    let (ev_tx, ev_rx) = mpsc::channel(256);
    let client = spawn_client(
        endpoint.clone(),
        ClientCtx {
            peers: vec![peer],
            media: hub.clone(),
            metrics,
            events: ev_tx,
        },
    );
    let mut run = Run {
        cmds: client.cmd_sender(),
        sock,
        hub: hub.clone(),
        hub_addr,
        play,
        play_pos: 0,
        frames: (duration.as_millis() / PTIME.as_millis()) as u64,
        digits: digits.into(),
        record: opts.record.is_some(),
        recorded: Vec::new(),
        progress: opts.progress,
        summary: Summary {
            destination: destination.clone(),
            peer: peer_label,
            state: "connecting".into(),
            ..Summary::default()
        },
        uri: None,
        out_seq: 0,
        in_seq: None,
        voice_pt: 0,
        dtmf_pt: Some(101),
        ssrc: rand::random(),
        detector: DigitDetector::new(8000),
        seq: rand::random(),
        ts: rand::random(),
        rstats: RecvStats::new(8000),
        started: Instant::now(),
        answered_at: None,
        media_done: None,
        end_sent: None,
        next_dtmf: None,
        dtmf_done: None,
        reopens: 0,
    };
    let request = CallRequest {
        destination,
        advertisement: Some(Advertisement {
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
        }),
        ..CallRequest::default()
    };
    let _ = run.cmds.send(RiptCmd::CreateCall {
        call: CALL,
        peer: 0,
        request,
    });
    let result = run.run(ev_rx).await;
    if run.progress {
        eprintln!();
    }
    let _ = run.cmds.send(RiptCmd::ClientClose { call: CALL });
    hub.apply(MediaCmd::Close { call: CALL });
    // Let the PUT stream carry its closing `]` before the connection goes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.abort();
    endpoint.close(0u32.into(), b"done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    let summary = result?;
    if let Some(path) = &opts.record {
        wav::write(path, &run.recorded).map_err(CallError::Local)?;
    }
    Ok(summary)
}

struct Run {
    cmds: mpsc::UnboundedSender<RiptCmd>,
    sock: UdpSocket,
    hub: MediaHub,
    hub_addr: SocketAddr,
    play: Vec<i16>,
    play_pos: usize,
    /// Packets to send in all.
    frames: u64,
    digits: VecDeque<Digit>,
    record: bool,
    recorded: Vec<i16>,
    progress: bool,
    summary: Summary,
    uri: Option<String>,
    out_seq: u64,
    in_seq: Option<u64>,
    voice_pt: u8,
    dtmf_pt: Option<u8>,
    ssrc: u32,
    detector: DigitDetector,
    seq: u16,
    ts: u32,
    rstats: RecvStats,
    started: Instant,
    answered_at: Option<Instant>,
    /// When the last packet was sent.
    media_done: Option<Instant>,
    end_sent: Option<Instant>,
    next_dtmf: Option<Instant>,
    /// When the last DTMF key's events are over.
    dtmf_done: Option<Instant>,
    reopens: u32,
}

/// How the event loop finished.
enum Done {
    /// The call existed and ended (well or not): see the summary.
    Ended,
    Error(CallError),
}

impl Run {
    async fn run(&mut self, mut events: mpsc::Receiver<RiptEvent>) -> Result<Summary, CallError> {
        let mut send_tick = tokio::time::interval(PTIME);
        let mut progress_tick = tokio::time::interval(PROGRESS_EVERY);
        let mut ping_tick = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut interrupted = false;
        let mut buf = vec![0u8; 2048];
        let done = loop {
            let timer = self.next_timer();
            tokio::select! {
                ev = events.recv() => {
                    let Some(ev) = ev else {
                        break Done::Error(CallError::Local("the HTTP/3 client stopped".into()));
                    };
                    if let Some(d) = self.on_event(ev) {
                        break d;
                    }
                }
                r = self.sock.recv_from(&mut buf) => {
                    if let Ok((n, src)) = r {
                        if src == self.hub_addr {
                            self.on_packet(&buf[..n]);
                        }
                    }
                }
                _ = send_tick.tick(), if self.sending() => self.send_frame().await,
                _ = tokio::time::sleep_until(timer) => {
                    if let Some(d) = self.on_timer() {
                        break d;
                    }
                }
                _ = progress_tick.tick(), if self.progress => self.show_progress(),
                _ = ping_tick.tick(), if self.uri.is_some() && self.end_sent.is_none() => {
                    let nonce = format!("{:08x}", rand::random::<u32>());
                    self.send_event(Event::ping(nonce));
                }
                _ = &mut ctrl_c, if !interrupted => {
                    interrupted = true;
                    if self.uri.is_none() {
                        break Done::Error(CallError::Local("interrupted".into()));
                    }
                    self.hang_up();
                }
            }
        };
        let s = &mut self.summary;
        s.packets_received = self.rstats.received;
        s.expected = self.rstats.expected();
        s.lost = self.rstats.lost();
        s.jitter_ms = self.rstats.jitter_ms();
        match done {
            Done::Ended => Ok(s.clone()),
            Done::Error(e) => Err(e),
        }
    }

    fn sending(&self) -> bool {
        self.answered_at.is_some()
            && self.end_sent.is_none()
            && self.summary.packets_sent < self.frames
    }

    fn next_timer(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let candidates = [
            self.answered_at
                .is_none()
                .then_some(self.started + ANSWER_TIMEOUT),
            self.hangup_at(),
            self.end_sent.map(|t| t + END_WAIT),
            self.next_dtmf,
        ];
        candidates.into_iter().flatten().min().unwrap_or(far)
    }

    fn on_timer(&mut self) -> Option<Done> {
        let now = Instant::now();
        if self.answered_at.is_none() && now >= self.started + ANSWER_TIMEOUT {
            self.summary.end = format!("not answered within {} s", ANSWER_TIMEOUT.as_secs());
            if self.uri.is_some() && self.end_sent.is_none() {
                self.send_event(Event::end(Some(&Reason::q850(102))));
            }
            return Some(Done::Ended);
        }
        if let Some(t) = self.next_dtmf.filter(|t| now >= *t) {
            if let Some(d) = self.digits.pop_front() {
                self.hub.apply(MediaCmd::SendDtmf {
                    call: CALL,
                    digit: d,
                });
                self.summary.dtmf_sent.push(d.digit);
                // The key's events, then its end packet retransmissions.
                self.dtmf_done = Some(now + Duration::from_millis(u64::from(DTMF_MS) + 60));
            }
            self.next_dtmf = (!self.digits.is_empty())
                .then(|| t + Duration::from_millis(u64::from(DTMF_MS)) + DTMF_GAP);
        }
        if self.hangup_at().is_some_and(|t| now >= t) {
            self.hang_up();
        }
        if let Some(t) = self.end_sent {
            if now >= t + END_WAIT {
                self.summary.end.push_str(" (the peer did not confirm)");
                return Some(Done::Ended);
            }
        }
        None
    }

    /// When to hang up: after the media and every DTMF key were sent, and a short tail.
    fn hangup_at(&self) -> Option<Instant> {
        if self.end_sent.is_some() || !self.digits.is_empty() {
            return None;
        }
        let media = self.media_done?;
        Some(self.dtmf_done.map_or(media, |d| d.max(media)) + TAIL)
    }

    /// Sends `end` (normal clearing) and waits for the far side to close the call.
    fn hang_up(&mut self) {
        if self.end_sent.is_some() {
            return;
        }
        let reason = Reason::q850(16);
        self.summary.end = format!("ended by us ({})", reason.to_header_value());
        self.summary.success = self.answered_at.is_some();
        self.send_event(Event::end(Some(&reason)));
        self.end_sent = Some(Instant::now());
    }

    fn send_event(&mut self, mut ev: Event) {
        ev.seq = Some(self.out_seq);
        self.out_seq += 1;
        ev.direction = Some(Direction::C2s);
        ev.call = self.uri.clone();
        let _ = self.cmds.send(RiptCmd::ClientSend {
            call: CALL,
            event: ev,
        });
    }

    fn on_event(&mut self, ev: RiptEvent) -> Option<Done> {
        match ev {
            RiptEvent::CreateFailed { status, reason, .. } => Some(Done::Error(if status == 0 {
                CallError::Unreachable(reason)
            } else {
                CallError::Refused { status, reason }
            })),
            RiptEvent::CallCreated { description, .. } => {
                self.uri = Some(description.uri.clone());
                self.summary.state = "proceeding".into();
                let c2s = |kind: &str| {
                    description.proposal.streams.iter().find(|s| {
                        s.direction == Direction::C2s && s.media_type.eq_ignore_ascii_case(kind)
                    })
                };
                let Some(voice) = c2s("audio/PCMU") else {
                    let offered: Vec<&str> = description
                        .proposal
                        .streams
                        .iter()
                        .map(|s| s.media_type.as_str())
                        .collect();
                    self.summary.end =
                        format!("the peer proposed {offered:?}, this tool sends PCMU only");
                    self.send_event(Event::end(Some(&Reason::q850(65))));
                    return Some(Done::Ended);
                };
                self.voice_pt = voice.payload_type;
                self.dtmf_pt = c2s("audio/telephone-event").map(|s| s.payload_type);
                if self.dtmf_pt != Some(101) {
                    self.hub.apply(MediaCmd::SetCodec {
                        call: CALL,
                        clock_rate: 8000,
                        dtmf_pt: self.dtmf_pt,
                        dtmf_as_info: false,
                    });
                }
                if !self.digits.is_empty() && self.dtmf_pt.is_none() {
                    eprintln!("warning: the peer did not propose telephone-event; --dtmf ignored");
                    self.digits.clear();
                }
                None
            }
            RiptEvent::ClientEvent { event, .. } => self.on_call_event(event),
            RiptEvent::ClientEventsLost { .. } => {
                if self.end_sent.is_some() {
                    // The server closed the stream after our `end`: the call is over.
                    return Some(Done::Ended);
                }
                self.reopens += 1;
                if self.reopens > MAX_REOPENS {
                    self.summary.end = "the events stream kept failing".into();
                    self.summary.success = false;
                    return Some(Done::Ended);
                }
                let _ = self.cmds.send(RiptCmd::ClientReopenEvents { call: CALL });
                None
            }
            _ => None,
        }
    }

    fn on_call_event(&mut self, ev: Event) -> Option<Done> {
        if let Some(seq) = ev.seq {
            if self.in_seq.is_some_and(|last| seq <= last) {
                return None;
            }
            self.in_seq = Some(seq);
        }
        let now = Instant::now();
        match ev.name {
            EventName::Proceeding | EventName::Alerting if self.answered_at.is_none() => {
                self.summary.state = ev.name.as_str().to_string();
            }
            EventName::Answered if self.answered_at.is_none() => {
                self.answered_at = Some(now);
                self.summary.setup = Some(now - self.started);
                self.summary.state = "answered".into();
                if !self.digits.is_empty() {
                    self.next_dtmf = Some(now + DTMF_GAP);
                }
            }
            EventName::End => {
                let reason = ev.reason.unwrap_or_else(|| "no reason given".into());
                if self.end_sent.is_none() {
                    self.summary.end = format!("ended by the peer ({reason})");
                    self.summary.success = self.answered_at.is_some();
                }
                return Some(Done::Ended);
            }
            EventName::Declined | EventName::Failed | EventName::Noanswer => {
                self.summary.state = ev.name.as_str().to_string();
                let mut end = ev.name.as_str().to_string();
                if let Some(c) = ev.code {
                    end.push_str(&format!(" {c}"));
                }
                if let Some(r) = ev.reason {
                    end.push_str(&format!(" {r}"));
                }
                self.summary.end = end;
                self.summary.success = false;
                return Some(Done::Ended);
            }
            EventName::Migrate => {
                let _ = self.cmds.send(RiptCmd::ClientReopenEvents { call: CALL });
            }
            _ => {}
        }
        None
    }

    fn on_packet(&mut self, pkt: &[u8]) {
        if rtp::classify(pkt) != PacketKind::Rtp {
            return;
        }
        let pt = pkt[1] & 0x7f;
        if Some(pt) == self.dtmf_pt {
            if let Some(d) = self.detector.on_packet(pkt) {
                self.summary.dtmf_received.push(d.digit);
            }
            return;
        }
        if pt != self.voice_pt {
            return;
        }
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
        let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);
        let arrival_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.rstats.on_packet(ssrc, seq, ts, arrival_ms);
        if self.record {
            if let Some(payload) = rtp_payload(pkt) {
                self.recorded
                    .extend(payload.iter().map(|&c| g711::decode(c)));
            }
        }
    }

    async fn send_frame(&mut self) {
        let mut pkt = Vec::with_capacity(12 + FRAME);
        pkt.push(0x80);
        pkt.push(self.voice_pt);
        pkt.extend_from_slice(&self.seq.to_be_bytes());
        pkt.extend_from_slice(&self.ts.to_be_bytes());
        pkt.extend_from_slice(&self.ssrc.to_be_bytes());
        for _ in 0..FRAME {
            // The play file loops when --duration is longer than it.
            pkt.push(g711::encode(self.play[self.play_pos]));
            self.play_pos = (self.play_pos + 1) % self.play.len();
        }
        if self.sock.send_to(&pkt, self.hub_addr).await.is_ok() {
            self.summary.packets_sent += 1;
        }
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(FRAME as u32);
        if self.summary.packets_sent >= self.frames {
            self.media_done = Some(Instant::now());
        }
    }

    fn show_progress(&self) {
        let since = self.answered_at.unwrap_or(self.started);
        let line = format!(
            "\r{:<10} {:>6.1} s  sent {:>6}  received {:>6}",
            self.summary.state,
            since.elapsed().as_secs_f64(),
            self.summary.packets_sent,
            self.rstats.received
        );
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
    }
}

/// The payload of an RTP packet (after CSRCs, header extension and before padding).
fn rtp_payload(pkt: &[u8]) -> Option<&[u8]> {
    let cc = usize::from(pkt[0] & 0x0f);
    let mut start = 12 + 4 * cc;
    if pkt[0] & 0x10 != 0 {
        let ext = pkt.get(start + 2..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    let mut end = pkt.len();
    if pkt[0] & 0x20 != 0 {
        end = end.checked_sub(usize::from(*pkt.last()?))?;
    }
    pkt.get(start..end)
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
    fn payload_skips_csrc_extension_and_padding() {
        let mut p = vec![0x80 | 0x20 | 0x10 | 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 9];
        p.extend_from_slice(&[1, 2, 3, 4]); // one CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 7, 7, 7, 7]); // extension, one word
        p.extend_from_slice(&[10, 11, 12]);
        p.extend_from_slice(&[0, 2]); // padding of 2
        assert_eq!(rtp_payload(&p).unwrap(), &[10, 11, 12]);
        let plain = rtp::pcmu_packet(3, 1);
        assert_eq!(rtp_payload(&plain).unwrap(), &plain[12..]);
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
        assert!(text.contains("setup time:       42 ms"), "{text}");
        assert!(text.contains("packets received: 147"), "{text}");
        assert!(
            text.contains("loss:             2.0 % (3 of 150)"),
            "{text}"
        );
    }
}
