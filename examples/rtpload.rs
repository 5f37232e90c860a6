//! rtpload: a small SIP UAC/UAS media load generator for the loopback benchmarks
//! (`interop/bench/media.sh --gen rtpload`). It exists because SIPp 3.6.1 cannot do SRTP.
//!
//! ```text
//! rtpload uas [--sip 127.0.0.1:5080] [--media-ip 127.0.0.1] [--srtp] [--calls N] [--send-for S]
//! rtpload uac [--target 127.0.0.1:5070] --calls N [--hold S] [--srtp] [--rate R]
//! ```
//!
//! What it does:
//! - `uac` places N calls, started evenly over N/R seconds (R defaults to N: all within ~1 s).
//!   Each call has its own UDP media socket, offers PCMU (with `a=rtcp-mux`), ACKs the 200,
//!   sends G.711 PCMU (160-byte payload, 20 ms, 50 packets/s) for `--hold` seconds, waits
//!   `--drain` seconds (1 s) so packets in flight arrive before teardown, then sends BYE.
//! - `uas` answers every INVITE with 200 OK and SDP (one media socket per call, port 0: the
//!   kernel picks it), retransmits the 200 until the ACK, answers a retransmitted INVITE with the
//!   same 200, starts its own PCMU stream toward the offer's address when the ACK arrives (for
//!   `--send-for` seconds, or until the BYE), answers BYE with 200. It echoes nothing.
//! - `--srtp`: SDES. The offer/answer use `RTP/SAVP` with one `a=crypto`
//!   AES_CM_128_HMAC_SHA1_80 key generated per call (ring's `SystemRandom`); the peer's key is
//!   taken from its SDP (the UAS picks the offered AES_CM_128_HMAC_SHA1_80 line and answers with
//!   its tag); packets are protected and unprotected with riptide's `SrtpSession`. Packets that
//!   fail authentication or the replay check are counted as `srtp_auth_failures`, not received.
//!   Without `--srtp` the SDP is plain `RTP/AVP` and an SRTP-only offer gets 488.
//! - Pacing: one sender task serves every call. It ticks every 2 ms and sends for one tenth of the
//!   calls per tick, so each call sends one packet per 20 ms without a timer per call and without
//!   one burst of N packets every 20 ms. A tick more than 20 ms late is skipped (counted in
//!   `ticks_skipped`); sends never block (`try_send_to`; failures are `send_errors`).
//! - Latency: each payload starts with its send time, 8 bytes big-endian, nanoseconds since the
//!   UNIX epoch (`SystemTime`). UAC and UAS are separate processes on one machine: they share the
//!   wall clock, while `Instant` values cannot cross processes. Each side reports the one-way
//!   latency p50/p99 of the packets it received (receive time − payload time).
//! - At the end each side prints one line of `key=value` figures on stdout: role, srtp, calls_ok,
//!   calls_failed, packets_sent, packets_received, srtp_auth_failures, latency_p50_us,
//!   latency_p99_us, then send_errors, sip_send_errors, ticks_skipped, rtcp_received,
//!   other_received, sip_malformed, sip_stray. Why calls failed goes to stderr. Exit status 0
//!   only when every call succeeded (2 on a usage or start-up error).
//!
//! What it does not do: no authentication (a 401/407 fails the call), UDP only (no TCP/TLS), no
//! re-INVITE/UPDATE/PRACK (in-dialog requests other than BYE get 501), no DNS, no 3xx following,
//! one `m=audio` line with PCMU only; ICE attributes in the peer's SDP are ignored (so a gateway
//! with `ice = "lite"` runs that leg without ICE); it sends no RTCP and only counts what RTCP it
//! receives. Every outgoing request goes to `--target` (an outbound proxy, in effect); the
//! remote target and Record-Route of the 200 still shape the in-dialog requests.
//!
//! Every wait is bounded: INVITE and BYE transactions (`--sip-timeout`), the ACK (`--ack-timeout`,
//! UAS), the whole run (`--timeout`). Odd SIP (unparseable, unknown Call-ID, unexpected method)
//! is counted or answered and skipped, never fatal.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use ring::rand::{SecureRandom, SystemRandom};
use riptide::media::srtp::{CryptoAttr, SrtpSession, Suite};
use riptide::sip::msg::{self, Extra, RequestSpec, Transport};
use rsipstack::sip::{Method, Request, Response, SipMessage};
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{sleep_until, Instant, MissedTickBehavior};

/// Packet interval of every stream (G.711, 20 ms).
const PTIME: Duration = Duration::from_millis(20);
/// The sender serves calls in this many groups, one group per PTIME / SLOTS.
const SLOTS: u64 = 10;
/// 20 ms of G.711 at 8 kHz.
const PAYLOAD: usize = 160;
const RTP_HEADER: usize = 12;
/// RFC 3261 timers: retransmission base and cap.
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
/// How long an ended or rejected call is remembered, to answer retransmissions (64·T1).
const LINGER: Duration = Duration::from_secs(32);
/// The one SDES suite rtpload offers and accepts.
const SUITE: Suite = Suite::AesCm128HmacSha1_80;
/// SIP socket buffers: a few hundred INVITEs within a second must not overflow the default.
const SIP_SOCKET_BUFFER: usize = 4 << 20;
/// At most this many failure lines are logged one by one; the rest only count.
const MAX_FAILURE_LOGS: u64 = 10;

#[derive(Parser)]
#[command(
    name = "rtpload",
    about = "SIP UAC/UAS with G.711 media, plain RTP or SDES-SRTP, for loopback benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Place calls, send and count media, hang up.
    Uac(UacArgs),
    /// Answer calls, send and count media.
    Uas(UasArgs),
}

#[derive(Args)]
struct UacArgs {
    /// Where every request goes (gateway A of the pair).
    #[arg(long, default_value = "127.0.0.1:5070")]
    target: SocketAddr,
    /// Local SIP address (UDP).
    #[arg(long, default_value = "127.0.0.1:5090")]
    sip: SocketAddr,
    /// Address the media sockets bind to and that goes into the SDP.
    #[arg(long, default_value = "127.0.0.1")]
    media_ip: IpAddr,
    /// User part of the request-URI (sip:USER@TARGET).
    #[arg(long, default_value = "answer")]
    user: String,
    /// Number of calls.
    #[arg(long)]
    calls: u32,
    /// Seconds of media per call, counted from the 200 OK.
    #[arg(long, default_value_t = 20.0)]
    hold: f64,
    /// Calls started per second (default: CALLS, i.e. all within about one second).
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds between the end of the stream and the BYE (packets in flight drain).
    #[arg(long, default_value_t = 1.0)]
    drain: f64,
    /// SDES-SRTP (RTP/SAVP, AES_CM_128_HMAC_SHA1_80) instead of plain RTP.
    #[arg(long)]
    srtp: bool,
    /// Seconds to wait for the final response to an INVITE or BYE.
    #[arg(long, default_value_t = 10.0)]
    sip_timeout: f64,
    /// Limit for the whole run in seconds (default: start-up spread + hold + drain + 60).
    #[arg(long)]
    timeout: Option<f64>,
}

#[derive(Args)]
struct UasArgs {
    /// Local SIP address (UDP).
    #[arg(long, default_value = "127.0.0.1:5080")]
    sip: SocketAddr,
    /// Address the media sockets bind to and that goes into the SDP.
    #[arg(long, default_value = "127.0.0.1")]
    media_ip: IpAddr,
    /// SDES-SRTP (answer RTP/SAVP offers with AES_CM_128_HMAC_SHA1_80) instead of plain RTP.
    #[arg(long)]
    srtp: bool,
    /// Exit once this many calls have ended (well or not). Default: run until --timeout or a
    /// signal (SIGTERM/SIGINT print the figures, too).
    #[arg(long)]
    calls: Option<u64>,
    /// Stop each call's stream this many seconds after its ACK (default: at the BYE).
    #[arg(long)]
    send_for: Option<f64>,
    /// Seconds to wait for the ACK of a 200 (retransmitting it meanwhile) before the call fails.
    #[arg(long, default_value_t = 32.0)]
    ack_timeout: f64,
    /// Limit for the whole run in seconds.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: the gateways under test need the machine's cores more than this tool does.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rtpload: error: cannot start the tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let res = rt.block_on(async {
        match cli.cmd {
            Cmd::Uac(a) => run_uac(a).await,
            Cmd::Uas(a) => run_uas(a).await,
        }
    });
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("rtpload: error: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared pieces: counters, sockets, time, SDP.

/// Counters shared by the tasks of one process.
#[derive(Default)]
struct Counters {
    packets_sent: AtomicU64,
    /// Media packets that could not be sent (socket buffer full, SRTP error).
    send_errors: AtomicU64,
    sip_send_errors: AtomicU64,
    ticks_skipped: AtomicU64,
    sip_malformed: AtomicU64,
    /// SIP messages for no known call (answered 481 when they are requests) or dropped
    /// because a call's queue was full.
    sip_stray: AtomicU64,
    failures_logged: AtomicU64,
}

impl Counters {
    fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// A poisoned lock only means another task panicked mid-update of plain data: keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn secs(name: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| format!("--{name} must be a non-negative number of seconds, got {v}"))
}

/// Wall-clock nanoseconds since the UNIX epoch: the one clock both processes can read.
fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A bound non-blocking UDP socket, as two handles on one descriptor: tokio's for receiving,
/// and a plain one for sending. Sends use the plain `send_to` (it fails only when the kernel
/// buffer is full): tokio's `try_send_to` also fails with WouldBlock while the reactor has not
/// yet seen a new socket writable, which the first packet of a fresh call would hit.
struct Udp {
    rx: Arc<UdpSocket>,
    tx: std::net::UdpSocket,
    local: SocketAddr,
}

fn bind_udp(addr: SocketAddr, buffers: Option<usize>) -> std::io::Result<Udp> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Some(size) = buffers {
        // Best effort: the kernel caps these at net.core.rmem_max / wmem_max.
        let _ = s.set_recv_buffer_size(size);
        let _ = s.set_send_buffer_size(size);
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    let s: std::net::UdpSocket = s.into();
    let tx = s.try_clone()?;
    let local = s.local_addr()?;
    Ok(Udp {
        rx: Arc::new(UdpSocket::from_std(s)?),
        tx,
        local,
    })
}

fn new_key(tag: u32) -> Result<CryptoAttr, String> {
    CryptoAttr::random(tag, SUITE).map_err(|e| e.to_string())
}

/// What rtpload reads from an SDP body: the first `m=audio` line and its attributes.
#[derive(Debug, Default)]
struct Sdp {
    ip: Option<IpAddr>,
    port: u16,
    proto: String,
    payload_types: Vec<String>,
    crypto: Vec<String>,
    rtcp_mux: bool,
}

fn parse_sdp(body: &[u8]) -> Result<Sdp, String> {
    let text = std::str::from_utf8(body).map_err(|_| "SDP is not UTF-8".to_string())?;
    if text.trim().is_empty() {
        return Err("no SDP body".into());
    }
    let connection = |v: &str| -> Option<IpAddr> {
        // c=IN IP4 127.0.0.1[/ttl]
        let addr = v.split_ascii_whitespace().nth(2)?;
        addr.split('/').next()?.parse().ok()
    };
    let mut sdp = Sdp::default();
    let (mut session_ip, mut in_audio, mut seen_audio) = (None, false, false);
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(m) = line.strip_prefix("m=") {
            in_audio = false;
            let mut f = m.split_ascii_whitespace();
            if !seen_audio && f.next() == Some("audio") {
                sdp.port = f
                    .next()
                    .and_then(|p| p.split('/').next()?.parse().ok())
                    .ok_or_else(|| format!("bad m= line {line:?}"))?;
                sdp.proto = f.next().unwrap_or("").to_string();
                sdp.payload_types = f.map(str::to_string).collect();
                in_audio = true;
                seen_audio = true;
            }
        } else if let Some(c) = line.strip_prefix("c=") {
            if in_audio {
                sdp.ip = connection(c);
            } else if !seen_audio {
                session_ip = connection(c);
            }
        } else if in_audio {
            if let Some(v) = line.strip_prefix("a=crypto:") {
                sdp.crypto.push(v.trim().to_string());
            } else if line == "a=rtcp-mux" {
                sdp.rtcp_mux = true;
            }
        }
    }
    if !seen_audio {
        return Err("no m=audio line".into());
    }
    sdp.ip = sdp.ip.or(session_ip);
    if sdp.ip.is_none() {
        return Err("no usable c= address".into());
    }
    Ok(sdp)
}

/// Where to send and how to decrypt, from the peer's SDP.
struct PeerMedia {
    addr: SocketAddr,
    key: Option<CryptoAttr>,
    rtcp_mux: bool,
    proto: String,
}

fn peer_media(sdp: &Sdp, srtp: bool) -> Result<PeerMedia, String> {
    let ip = sdp.ip.ok_or("no c= address")?;
    if sdp.port == 0 {
        return Err("audio stream refused (port 0)".into());
    }
    if !sdp.payload_types.iter().any(|p| p == "0") {
        return Err(format!(
            "PCMU (payload type 0) not in m=audio ({})",
            sdp.payload_types.join(" ")
        ));
    }
    let key = if srtp {
        let key = sdp
            .crypto
            .iter()
            .find_map(|c| CryptoAttr::parse(c).ok().filter(|k| k.suite == SUITE))
            .ok_or_else(|| {
                format!(
                    "no usable a=crypto {} in the SDP ({} a=crypto lines, {})",
                    SUITE.name(),
                    sdp.crypto.len(),
                    sdp.proto
                )
            })?;
        Some(key)
    } else {
        if sdp.proto.contains("SAVP") {
            return Err(format!(
                "{} needs SRTP (rtpload runs without --srtp)",
                sdp.proto
            ));
        }
        None
    };
    Ok(PeerMedia {
        addr: SocketAddr::new(ip, sdp.port),
        key,
        rtcp_mux: sdp.rtcp_mux,
        proto: sdp.proto.clone(),
    })
}

fn build_sdp(
    ip: IpAddr,
    port: u16,
    proto: &str,
    key: Option<&CryptoAttr>,
    rtcp_mux: bool,
    id: u64,
) -> String {
    let ipv = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut s = format!(
        "v=0\r\no=rtpload {id} 1 IN {ipv} {ip}\r\ns=rtpload\r\nc=IN {ipv} {ip}\r\nt=0 0\r\n\
         m=audio {port} {proto} 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    );
    if rtcp_mux {
        s.push_str("a=rtcp-mux\r\n");
    }
    if let Some(k) = key {
        s.push_str(&format!("a=crypto:{}\r\n", k.to_attr_value()));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Media: the shared sender and the per-call receivers.

static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

/// One call's outgoing RTP stream.
struct Stream {
    id: u64,
    socket: std::net::UdpSocket,
    peer: SocketAddr,
    seq: u16,
    ts: u32,
    ssrc: u32,
    marker: bool,
    srtp: Option<SrtpSession>,
    /// The sender drops the stream at this time.
    stop_at: Option<Instant>,
}

impl Stream {
    fn new(
        socket: std::net::UdpSocket,
        peer: SocketAddr,
        srtp: Option<SrtpSession>,
        rng: &SystemRandom,
    ) -> Stream {
        let mut r = [0u8; 10];
        // Only for SSRC and initial sequence/timestamp: a failure just leaves zeros.
        let _ = rng.fill(&mut r);
        Stream {
            id: NEXT_STREAM.fetch_add(1, Ordering::Relaxed),
            socket,
            peer,
            seq: u16::from_be_bytes([r[0], r[1]]),
            ts: u32::from_be_bytes([r[2], r[3], r[4], r[5]]),
            ssrc: u32::from_be_bytes([r[6], r[7], r[8], r[9]]),
            marker: true,
            srtp,
            stop_at: None,
        }
    }

    /// Writes the next packet into `pkt` (payload bytes after the timestamp are left as they
    /// are: µ-law silence) and sends it without blocking.
    fn send(&mut self, pkt: &mut [u8; RTP_HEADER + PAYLOAD]) -> Result<(), String> {
        pkt[0] = 0x80; // V=2, no padding, no extension, no CSRC
        pkt[1] = if self.marker { 0x80 } else { 0x00 }; // PT 0 (PCMU)
        self.marker = false;
        pkt[2..4].copy_from_slice(&self.seq.to_be_bytes());
        pkt[4..8].copy_from_slice(&self.ts.to_be_bytes());
        pkt[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        pkt[RTP_HEADER..RTP_HEADER + 8].copy_from_slice(&wall_ns().to_be_bytes());
        self.seq = self.seq.wrapping_add(1);
        self.ts = self.ts.wrapping_add(PAYLOAD as u32);
        let res = match &mut self.srtp {
            Some(s) => {
                let p = s.protect_rtp(pkt).map_err(|e| e.to_string())?;
                self.socket.send_to(&p, self.peer)
            }
            None => self.socket.send_to(pkt, self.peer),
        };
        res.map(|_| ())
            .map_err(|e| format!("RTP send to {}: {e}", self.peer))
    }
}

/// The one task that sends for every call.
#[derive(Clone)]
struct Pacer {
    streams: Arc<Mutex<Vec<Stream>>>,
    counters: Arc<Counters>,
}

impl Pacer {
    fn new(counters: Arc<Counters>) -> Pacer {
        Pacer {
            streams: Arc::new(Mutex::new(Vec::new())),
            counters,
        }
    }

    fn add(&self, s: Stream) {
        lock(&self.streams).push(s);
    }

    fn remove(&self, id: u64) {
        lock(&self.streams).retain(|s| s.id != id);
    }

    async fn run(self) {
        let mut tick = tokio::time::interval(PTIME / SLOTS as u32);
        // Late ticks are caught up (so each call keeps 50 packets/s) unless a whole packet
        // interval late: then that group skips a packet instead of sending two back to back.
        tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let mut pkt = [0xFFu8; RTP_HEADER + PAYLOAD];
        let mut n: u64 = 0;
        loop {
            let due = tick.tick().await;
            let slot = n % SLOTS;
            n += 1;
            if due.elapsed() > PTIME {
                Counters::inc(&self.counters.ticks_skipped);
                continue;
            }
            let now = Instant::now();
            let mut streams = lock(&self.streams);
            streams.retain(|s| s.stop_at.is_none_or(|t| now < t));
            for s in streams.iter_mut().filter(|s| s.id % SLOTS == slot) {
                match s.send(&mut pkt) {
                    Ok(()) => Counters::inc(&self.counters.packets_sent),
                    Err(e) => {
                        let c = &self.counters;
                        if c.send_errors.fetch_add(1, Ordering::Relaxed) < MAX_FAILURE_LOGS {
                            eprintln!("rtpload: {e}");
                        }
                    }
                }
            }
        }
    }
}

/// What a receiver counted.
#[derive(Default)]
struct RxStats {
    received: u64,
    auth_failures: u64,
    rtcp: u64,
    other: u64,
    latencies_us: Vec<u32>,
}

impl RxStats {
    fn merge(&mut self, o: RxStats) {
        self.received += o.received;
        self.auth_failures += o.auth_failures;
        self.rtcp += o.rtcp;
        self.other += o.other;
        self.latencies_us.extend(o.latencies_us);
    }

    fn on_packet(&mut self, data: &[u8], arrived_ns: u64, srtp: Option<&mut SrtpSession>) {
        if data.len() < RTP_HEADER || data[0] >> 6 != 2 {
            self.other += 1;
            return;
        }
        // RFC 5761 §4: with rtcp-mux, second byte 200-204 is RTCP (or SRTCP): count, skip.
        if (200..=204).contains(&data[1]) {
            self.rtcp += 1;
            return;
        }
        let plain;
        let rtp = match srtp {
            Some(s) => match s.unprotect_rtp(data) {
                Ok(p) => {
                    plain = p;
                    &plain[..]
                }
                Err(_) => {
                    self.auth_failures += 1;
                    return;
                }
            },
            None => data,
        };
        self.received += 1;
        if let Some(sent_ns) = payload_time(rtp) {
            let us = arrived_ns.saturating_sub(sent_ns) / 1000;
            self.latencies_us
                .push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }

    /// p-th percentile (nearest rank) of the latencies; sorts them.
    fn percentile(&mut self, p: f64) -> Option<u32> {
        if self.latencies_us.is_empty() {
            return None;
        }
        self.latencies_us.sort_unstable();
        let n = self.latencies_us.len();
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        Some(self.latencies_us[rank.clamp(1, n) - 1])
    }
}

/// The send time at the start of an rtpload payload (after CSRCs and a header extension).
fn payload_time(rtp: &[u8]) -> Option<u64> {
    let cc = usize::from(rtp.first()? & 0x0F);
    let mut at = RTP_HEADER + 4 * cc;
    if rtp[0] & 0x10 != 0 {
        let words = rtp.get(at + 2..at + 4)?;
        at += 4 + 4 * usize::from(u16::from_be_bytes([words[0], words[1]]));
    }
    let t = rtp.get(at..at + 8)?;
    let mut b = [0u8; 8];
    b.copy_from_slice(t);
    Some(u64::from_be_bytes(b))
}

/// Counts one call's incoming media until `stop` fires (or its sender is dropped), then takes
/// what is already queued in the socket without waiting.
async fn receive(
    socket: Arc<UdpSocket>,
    mut srtp: Option<SrtpSession>,
    mut stop: oneshot::Receiver<()>,
) -> RxStats {
    let mut stats = RxStats::default();
    let mut buf = vec![0u8; 2048];
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, _)) => stats.on_packet(&buf[..n], wall_ns(), srtp.as_mut()),
                // ICMP errors and the like: not media; avoid spinning on a persistent error.
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            },
        }
    }
    while let Ok((n, _)) = socket.try_recv_from(&mut buf) {
        stats.on_packet(&buf[..n], wall_ns(), srtp.as_mut());
    }
    stats
}

/// A call's receiver task and the handle that stops it.
struct Receiver {
    stop: oneshot::Sender<()>,
    task: JoinHandle<RxStats>,
}

impl Receiver {
    fn spawn(socket: Arc<UdpSocket>, srtp: Option<SrtpSession>) -> Receiver {
        let (stop, stopped) = oneshot::channel();
        Receiver {
            stop,
            task: tokio::spawn(receive(socket, srtp, stopped)),
        }
    }

    async fn finish(self) -> RxStats {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// Both directions' SRTP contexts come as one `SrtpSession`; the sender and the receiver each
/// get their own so they never share a lock.
fn srtp_pair(
    local: Option<&CryptoAttr>,
    remote: Option<&CryptoAttr>,
) -> Result<(Option<SrtpSession>, Option<SrtpSession>), String> {
    match (local, remote) {
        (Some(l), Some(r)) => {
            let tx = SrtpSession::new(l, r).map_err(|e| e.to_string())?;
            let rx = SrtpSession::new(l, r).map_err(|e| e.to_string())?;
            Ok((Some(tx), Some(rx)))
        }
        _ => Ok((None, None)),
    }
}

fn summary(role: &str, srtp: bool, ok: u64, failed: u64, c: &Counters, rx: &mut RxStats) -> String {
    let p = |v: Option<u32>| v.map_or_else(|| "n/a".to_string(), |v| v.to_string());
    let (p50, p99) = (p(rx.percentile(50.0)), p(rx.percentile(99.0)));
    format!(
        "role={role} srtp={} calls_ok={ok} calls_failed={failed} packets_sent={} \
         packets_received={} srtp_auth_failures={} latency_p50_us={p50} latency_p99_us={p99} \
         send_errors={} sip_send_errors={} ticks_skipped={} rtcp_received={} other_received={} sip_malformed={} \
         sip_stray={}",
        if srtp { "yes" } else { "no" },
        Counters::get(&c.packets_sent),
        rx.received,
        rx.auth_failures,
        Counters::get(&c.send_errors),
        Counters::get(&c.sip_send_errors),
        Counters::get(&c.ticks_skipped),
        rx.rtcp,
        rx.other,
        Counters::get(&c.sip_malformed),
        Counters::get(&c.sip_stray),
    )
}

fn report_failures(role: &str, reasons: &BTreeMap<String, u64>) {
    for (why, n) in reasons {
        eprintln!("rtpload {role}: {n} call(s) failed: {why}");
    }
}

fn log_failure(role: &str, c: &Counters, what: &str) {
    if c.failures_logged.fetch_add(1, Ordering::Relaxed) < MAX_FAILURE_LOGS {
        eprintln!("rtpload {role}: {what}");
    }
}

/// Sends one SIP datagram without blocking; failures are counted and the first few logged.
fn sip_send(sock: &std::net::UdpSocket, bytes: &[u8], to: SocketAddr, c: &Counters) {
    if let Err(e) = sock.send_to(bytes, to) {
        if c.sip_send_errors.fetch_add(1, Ordering::Relaxed) < MAX_FAILURE_LOGS {
            eprintln!("rtpload: SIP send to {to} failed: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// UAC.

/// A SIP message routed to one call.
struct Incoming {
    msg: SipMessage,
    info: msg::Info,
    src: SocketAddr,
}

struct Uac {
    args: UacArgs,
    sip: Udp,
    local_sip: SocketAddr,
    calls: Mutex<HashMap<String, mpsc::Sender<Incoming>>>,
    pacer: Pacer,
    counters: Arc<Counters>,
    rng: SystemRandom,
    hold: Duration,
    drain: Duration,
    sip_timeout: Duration,
}

impl Uac {
    fn send(&self, bytes: &[u8]) {
        sip_send(&self.sip.tx, bytes, self.args.target, &self.counters);
    }

    fn reply(&self, req: &Request, src: SocketAddr, code: u16, reason: &str) {
        let resp = msg::response(req, src, code, reason, None, &Extra::none());
        sip_send(&self.sip.tx, &resp, src, &self.counters);
    }
}

async fn run_uac(args: UacArgs) -> Result<bool, String> {
    if args.calls == 0 {
        return Err("--calls must be at least 1".into());
    }
    let rate = args.rate.unwrap_or(f64::from(args.calls));
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!("--rate must be a positive number, got {rate}"));
    }
    let hold = secs("hold", args.hold)?;
    let drain = secs("drain", args.drain)?;
    let sip_timeout = secs("sip-timeout", args.sip_timeout)?;
    let spread = f64::from(args.calls) / rate;
    let timeout = secs(
        "timeout",
        args.timeout
            .unwrap_or(spread + args.hold + args.drain + 60.0),
    )?;
    let sip = bind_udp(args.sip, Some(SIP_SOCKET_BUFFER))
        .map_err(|e| format!("cannot bind SIP socket {}: {e}", args.sip))?;
    let local_sip = sip.local;
    let counters = Arc::new(Counters::default());
    let pacer = Pacer::new(counters.clone());
    let (srtp, calls) = (args.srtp, args.calls);
    eprintln!(
        "rtpload uac: {calls} calls toward {} from {local_sip} ({}), {rate} calls/s, hold {:?}",
        args.target,
        if srtp { "SDES-SRTP" } else { "plain RTP" },
        hold
    );
    let uac = Arc::new(Uac {
        args,
        sip,
        local_sip,
        calls: Mutex::new(HashMap::new()),
        pacer: pacer.clone(),
        counters: counters.clone(),
        rng: SystemRandom::new(),
        hold,
        drain,
        sip_timeout,
    });
    let sip_task = tokio::spawn(uac_sip_loop(uac.clone()));
    let pacer_task = tokio::spawn(pacer.run());

    let start = Instant::now();
    let deadline = start + timeout;
    let mut set = JoinSet::new();
    for i in 0..calls {
        let uac = uac.clone();
        let at = start + Duration::from_secs_f64(f64::from(i) / rate);
        set.spawn(async move {
            sleep_until(at).await;
            uac_call(uac, i).await
        });
    }
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut reasons = BTreeMap::new();
    let mut rx = RxStats::default();
    let mut stop_reason = None;
    while !set.is_empty() {
        tokio::select! {
            r = set.join_next() => match r {
                Some(Ok((outcome, stats))) => {
                    rx.merge(stats);
                    match outcome {
                        Ok(()) => ok += 1,
                        Err(why) => {
                            failed += 1;
                            *reasons.entry(why).or_insert(0) += 1;
                        }
                    }
                }
                Some(Err(e)) => {
                    failed += 1;
                    *reasons.entry(format!("call task: {e}")).or_insert(0) += 1;
                }
                None => break,
            },
            _ = sleep_until(deadline) => { stop_reason = Some(format!("run timeout ({timeout:?})")); break }
            _ = term.recv() => { stop_reason = Some("SIGTERM".to_string()); break }
            _ = int.recv() => { stop_reason = Some("SIGINT".to_string()); break }
        }
    }
    if let Some(why) = stop_reason {
        let left = set.len() as u64;
        eprintln!("rtpload uac: stopping on {why}: {left} call(s) unfinished");
        set.abort_all();
        failed += left;
        if left > 0 {
            reasons.insert(format!("unfinished at {why}"), left);
        }
    }
    pacer_task.abort();
    sip_task.abort();
    report_failures("uac", &reasons);
    println!("{}", summary("uac", srtp, ok, failed, &counters, &mut rx));
    Ok(failed == 0 && ok == u64::from(calls))
}

/// Reads the SIP socket and hands each message to its call by Call-ID.
async fn uac_sip_loop(uac: Arc<Uac>) {
    let mut buf = vec![0u8; msg::MAX_MESSAGE + 1];
    loop {
        let (n, src) = match uac.sip.rx.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let Ok((m, info)) = msg::parse(&buf[..n]) else {
            Counters::inc(&uac.counters.sip_malformed);
            continue;
        };
        let call = lock(&uac.calls).get(&info.call_id).cloned();
        match call {
            Some(tx) => {
                if tx.try_send(Incoming { msg: m, info, src }).is_err() {
                    Counters::inc(&uac.counters.sip_stray);
                }
            }
            None => {
                Counters::inc(&uac.counters.sip_stray);
                if let SipMessage::Request(r) = &m {
                    if r.method != Method::Ack {
                        uac.reply(r, src, 481, "Call/Transaction Does Not Exist");
                    }
                }
            }
        }
    }
}

/// One call from INVITE to the BYE's 200. Returns the outcome and what its receiver counted.
async fn uac_call(uac: Arc<Uac>, i: u32) -> (Result<(), String>, RxStats) {
    let (tx, mut rx) = mpsc::channel(32);
    let call_id = format!("{}-{i}@rtpload", msg::token(16));
    lock(&uac.calls).insert(call_id.clone(), tx);
    let mut stats = RxStats::default();
    let outcome = uac_dialog(&uac, i, &call_id, &mut rx, &mut stats).await;
    lock(&uac.calls).remove(&call_id);
    if let Err(why) = &outcome {
        log_failure("uac", &uac.counters, &format!("call {i} failed: {why}"));
    }
    (outcome, stats)
}

/// The dialog of one call as the UAC sees it.
struct Dialog<'a> {
    uac: &'a Uac,
    call_id: &'a str,
    from: String,
    /// The To header value, with the remote tag once the 200 arrived.
    to: String,
    remote_target: String,
    routes: Vec<String>,
    via_host: String,
    contact: String,
}

impl Dialog<'_> {
    fn request(
        &self,
        method: &str,
        uri: &str,
        branch: &str,
        cseq: u32,
        body: Option<&[u8]>,
    ) -> Vec<u8> {
        let spec = RequestSpec {
            method,
            uri,
            via_host: &self.via_host,
            transport: Transport::Udp,
            branch,
            from: &self.from,
            to: &self.to,
            call_id: self.call_id,
            cseq,
            contact: Some(&self.contact),
            routes: &self.routes,
            max_forwards: 70,
        };
        let extra = match body {
            Some(b) => Extra::none().sdp(b),
            None => Extra::none(),
        };
        msg::request(&spec, &extra)
    }

    /// Sends `bytes` and retransmits (T1 doubling to T2) until the final response for
    /// (`method`, `cseq`) arrives or the SIP timeout passes. A BYE from the peer meanwhile is
    /// answered and ends the wait.
    async fn transaction(
        &self,
        rx: &mut mpsc::Receiver<Incoming>,
        bytes: &[u8],
        method: Method,
        cseq: u32,
    ) -> Result<(Response, msg::Info), String> {
        let deadline = Instant::now() + self.uac.sip_timeout;
        let mut interval = T1;
        let mut next = Some(Instant::now() + interval);
        self.uac.send(bytes);
        loop {
            let wake = next.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                m = rx.recv() => {
                    let Some(m) = m else { return Err("SIP receive loop ended".into()) };
                    match m.msg {
                        SipMessage::Response(r) if m.info.cseq_method == method && m.info.cseq == cseq => {
                            if r.status_code.code() >= 200 {
                                return Ok((r, m.info));
                            }
                            // RFC 3261 §17.1.1.2 / §17.1.2.2: a provisional stops INVITE
                            // retransmissions and slows non-INVITE ones to T2.
                            next = if method == Method::Invite { None } else { interval = T2; Some(Instant::now() + T2) };
                        }
                        SipMessage::Request(req) => {
                            if self.in_dialog_request(&req, m.src) {
                                return Err(format!("peer sent BYE while waiting for the {method} response"));
                            }
                        }
                        SipMessage::Response(_) => {} // stale (e.g. a retransmitted 200 of an earlier transaction)
                    }
                }
                _ = sleep_until(wake) => {
                    if Instant::now() >= deadline {
                        return Err(format!("timeout: no final response to {method} within {:?}", self.uac.sip_timeout));
                    }
                    self.uac.send(bytes);
                    interval = (interval * 2).min(T2);
                    next = Some(Instant::now() + interval);
                }
            }
        }
    }

    /// Answers a request the peer sent inside the dialog; true if it was a BYE.
    fn in_dialog_request(&self, req: &Request, src: SocketAddr) -> bool {
        match req.method {
            Method::Ack => false,
            Method::Bye => {
                self.uac.reply(req, src, 200, "OK");
                true
            }
            _ => {
                self.uac.reply(req, src, 501, "Not Implemented (rtpload)");
                false
            }
        }
    }
}

async fn uac_dialog(
    uac: &Uac,
    i: u32,
    call_id: &str,
    rx: &mut mpsc::Receiver<Incoming>,
    stats: &mut RxStats,
) -> Result<(), String> {
    let args = &uac.args;
    let media = bind_udp(SocketAddr::new(args.media_ip, 0), None)
        .map_err(|e| format!("cannot bind a media socket on {}: {e}", args.media_ip))?;
    let port = media.local.port();
    let local_key = if args.srtp { Some(new_key(1)?) } else { None };
    let proto = if args.srtp { "RTP/SAVP" } else { "RTP/AVP" };
    let offer = build_sdp(
        args.media_ip,
        port,
        proto,
        local_key.as_ref(),
        true,
        u64::from(i),
    );
    let ruri = format!("sip:{}@{}", args.user, args.target);
    let mut d = Dialog {
        uac,
        call_id,
        from: format!("<sip:rtpload@{}>;tag={}", uac.local_sip, msg::token(10)),
        to: format!("<{ruri}>"),
        remote_target: ruri.clone(),
        routes: Vec::new(),
        via_host: uac.local_sip.to_string(),
        contact: format!("<sip:rtpload@{}>", uac.local_sip),
    };

    let branch = msg::branch();
    let invite = d.request("INVITE", &ruri, &branch, 1, Some(offer.as_bytes()));
    let (resp, _) = d.transaction(rx, &invite, Method::Invite, 1).await?;
    let (code, reason) = msg::status(&resp);
    if let Some(to) = msg::first_header(&resp.headers, "To") {
        d.to = to;
    }
    if !(200..300).contains(&code) {
        // RFC 3261 §17.1.1.3: the ACK of a non-2xx final is part of the INVITE transaction.
        let ack = d.request("ACK", &ruri, &branch, 1, None);
        uac.send(&ack);
        return Err(format!("INVITE answered {code} {reason}"));
    }
    if let Some(c) = msg::first_header(&resp.headers, "Contact") {
        d.remote_target = msg::addr_uri(&c).to_string();
    }
    d.routes = msg::header_values(&resp.headers, "Record-Route")
        .iter()
        .flat_map(|v| {
            msg::split_list(v)
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .rev()
        .collect();
    let ack = d.request("ACK", &d.remote_target, &msg::branch(), 1, None);
    uac.send(&ack);

    // Media from the answer; a bad answer still gets its BYE.
    let setup = parse_sdp(&resp.body)
        .and_then(|sdp| peer_media(&sdp, args.srtp))
        .and_then(|peer| {
            let (tx, rx) = srtp_pair(local_key.as_ref(), peer.key.as_ref())?;
            Ok((peer.addr, tx, rx))
        });
    let (mut failure, media_parts) = match setup {
        Ok(parts) => (None, Some(parts)),
        Err(e) => (Some(format!("unusable SDP answer: {e}")), None),
    };
    let mut receiver = None;
    let mut stream_id = None;
    if let Some((peer, tx_srtp, rx_srtp)) = media_parts {
        receiver = Some(Receiver::spawn(media.rx.clone(), rx_srtp));
        let mut s = Stream::new(media.tx, peer, tx_srtp, &uac.rng);
        s.stop_at = Some(Instant::now() + uac.hold);
        stream_id = Some(s.id);
        uac.pacer.add(s);
    }

    // Hold, then drain; a retransmitted 200 gets its ACK again, a BYE from the peer ends it.
    let bye_at = Instant::now() + uac.hold + uac.drain;
    let mut remote_bye = false;
    while failure.is_none() {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { failure = Some("SIP receive loop ended".into()); break };
                match m.msg {
                    SipMessage::Response(r) if m.info.cseq_method == Method::Invite && r.status_code.code() / 100 == 2 => uac.send(&ack),
                    SipMessage::Request(req) => {
                        if d.in_dialog_request(&req, m.src) {
                            remote_bye = true;
                            failure = Some("peer sent BYE during the call".into());
                        }
                    }
                    SipMessage::Response(_) => {}
                }
            }
            _ = sleep_until(bye_at) => break,
        }
    }
    if let Some(id) = stream_id {
        uac.pacer.remove(id);
    }

    if !remote_bye {
        let bye = d.request("BYE", &d.remote_target, &msg::branch(), 2, None);
        match d.transaction(rx, &bye, Method::Bye, 2).await {
            Ok((r, _)) if r.status_code.code() / 100 == 2 => {}
            Ok((r, _)) => {
                let (code, reason) = msg::status(&r);
                failure.get_or_insert(format!("BYE answered {code} {reason}"));
            }
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    if let Some(r) = receiver {
        *stats = r.finish().await;
    }
    match failure {
        None => Ok(()),
        Some(f) => Err(f),
    }
}

// ---------------------------------------------------------------------------------------------
// UAS.

enum UasState {
    /// 200 sent, waiting for the ACK; the stream starts on the ACK.
    Answered {
        ok: Vec<u8>,
        src: SocketAddr,
        next_retx: Instant,
        interval: Duration,
        give_up: Instant,
        /// Boxed: SRTP contexts make a stream large.
        stream: Option<Box<Stream>>,
    },
    Confirmed {
        stream_id: u64,
    },
    /// Rejected with `resp`, which a retransmitted INVITE gets again.
    Rejected {
        resp: Vec<u8>,
        at: Instant,
    },
    /// Over; remembered to answer a retransmitted BYE.
    Ended {
        at: Instant,
    },
}

struct UasCall {
    state: UasState,
    receiver: Option<Receiver>,
}

struct Uas {
    args: UasArgs,
    sip: Udp,
    contact: String,
    pacer: Pacer,
    counters: Arc<Counters>,
    rng: SystemRandom,
    send_for: Option<Duration>,
    ack_timeout: Duration,
    calls: HashMap<String, UasCall>,
    ok: u64,
    failed: u64,
    reasons: BTreeMap<String, u64>,
    /// Receivers of ended calls, finishing in the background.
    finishing: JoinSet<RxStats>,
    rx: RxStats,
}

async fn run_uas(args: UasArgs) -> Result<bool, String> {
    let send_for = args.send_for.map(|s| secs("send-for", s)).transpose()?;
    let ack_timeout = secs("ack-timeout", args.ack_timeout)?;
    let timeout = secs("timeout", args.timeout)?;
    let sip = bind_udp(args.sip, Some(SIP_SOCKET_BUFFER))
        .map_err(|e| format!("cannot bind SIP socket {}: {e}", args.sip))?;
    let local = sip.local;
    let counters = Arc::new(Counters::default());
    let pacer = Pacer::new(counters.clone());
    let pacer_task = tokio::spawn(pacer.clone().run());
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    eprintln!(
        "rtpload uas: listening on {local} ({})",
        if args.srtp { "SDES-SRTP" } else { "plain RTP" }
    );
    let mut uas = Uas {
        contact: format!("<sip:rtpload@{local}>"),
        args,
        sip,
        pacer,
        counters: counters.clone(),
        rng: SystemRandom::new(),
        send_for,
        ack_timeout,
        calls: HashMap::new(),
        ok: 0,
        failed: 0,
        reasons: BTreeMap::new(),
        finishing: JoinSet::new(),
        rx: RxStats::default(),
    };
    let deadline = Instant::now() + timeout;
    let mut housekeeping = tokio::time::interval(Duration::from_millis(100));
    let mut buf = vec![0u8; msg::MAX_MESSAGE + 1];
    loop {
        if uas.args.calls.is_some_and(|n| uas.ok + uas.failed >= n) {
            break;
        }
        tokio::select! {
            r = uas.sip.rx.recv_from(&mut buf) => match r {
                Ok((n, src)) => uas.on_datagram(&buf[..n], src),
                Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
            },
            _ = housekeeping.tick() => uas.housekeeping(),
            Some(r) = uas.finishing.join_next(), if !uas.finishing.is_empty() => {
                if let Ok(s) = r {
                    uas.rx.merge(s);
                }
            }
            _ = sleep_until(deadline) => { eprintln!("rtpload uas: run timeout ({timeout:?})"); break }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Calls still up count as failed; every receiver is stopped and collected (bounded wait).
    let open: Vec<String> = uas.calls.keys().cloned().collect();
    for id in open {
        if let Some(c) = uas.calls.get(&id) {
            if matches!(
                c.state,
                UasState::Answered { .. } | UasState::Confirmed { .. }
            ) {
                uas.end_call(&id, Some("unfinished when rtpload uas stopped"));
            }
        }
    }
    pacer_task.abort();
    let collect = async {
        while let Some(r) = uas.finishing.join_next().await {
            if let Ok(s) = r {
                uas.rx.merge(s);
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), collect)
        .await
        .is_err()
    {
        eprintln!("rtpload uas: some receivers did not stop within 5 s; their counts are missing");
    }
    report_failures("uas", &uas.reasons);
    let ok = uas.ok;
    let failed = uas.failed;
    let line = summary("uas", uas.args.srtp, ok, failed, &counters, &mut uas.rx);
    println!("{line}");
    Ok(failed == 0 && uas.args.calls.is_none_or(|n| ok >= n))
}

impl Uas {
    fn send(&self, bytes: &[u8], to: SocketAddr) {
        sip_send(&self.sip.tx, bytes, to, &self.counters);
    }

    fn reply(&self, req: &Request, src: SocketAddr, code: u16, reason: &str) {
        self.send(
            &msg::response(req, src, code, reason, None, &Extra::none()),
            src,
        );
    }

    fn on_datagram(&mut self, data: &[u8], src: SocketAddr) {
        let Ok((m, info)) = msg::parse(data) else {
            Counters::inc(&self.counters.sip_malformed);
            return;
        };
        // We send no requests, so every response is stray.
        let SipMessage::Request(req) = m else {
            Counters::inc(&self.counters.sip_stray);
            return;
        };
        let id = info.call_id.as_str();
        match req.method {
            Method::Invite => self.on_invite(&req, &info, src),
            Method::Ack => self.on_ack(id),
            Method::Bye => match self.calls.get(id).map(|c| &c.state) {
                Some(UasState::Answered { .. } | UasState::Confirmed { .. }) => {
                    self.reply(&req, src, 200, "OK");
                    self.end_call(id, None);
                }
                Some(UasState::Ended { .. }) => self.reply(&req, src, 200, "OK"),
                _ => {
                    Counters::inc(&self.counters.sip_stray);
                    self.reply(&req, src, 481, "Call/Transaction Does Not Exist");
                }
            },
            // Every INVITE is answered at once, so a CANCEL always comes too late.
            Method::Cancel => self.reply(&req, src, 200, "OK"),
            Method::Options => self.reply(&req, src, 200, "OK"),
            _ => self.reply(&req, src, 501, "Not Implemented (rtpload)"),
        }
    }

    fn on_invite(&mut self, req: &Request, info: &msg::Info, src: SocketAddr) {
        if let Some(c) = self.calls.get(&info.call_id) {
            match &c.state {
                UasState::Answered { ok, .. } => self.send(ok, src),
                UasState::Rejected { resp, .. } => self.send(resp, src),
                // A re-INVITE (or a very late retransmission).
                _ if info.to_tag.is_some() => {
                    self.reply(req, src, 501, "Not Implemented (rtpload: no re-INVITE)")
                }
                _ => {}
            }
            return;
        }
        let to_tag = msg::token(10);
        match self.answer(req, src, &to_tag) {
            Ok((ok, stream, receiver)) => {
                self.send(&ok, src);
                let now = Instant::now();
                self.calls.insert(
                    info.call_id.clone(),
                    UasCall {
                        state: UasState::Answered {
                            ok,
                            src,
                            next_retx: now + T1,
                            interval: T1,
                            give_up: now + self.ack_timeout,
                            stream: Some(Box::new(stream)),
                        },
                        receiver: Some(receiver),
                    },
                );
            }
            Err((code, reason, why)) => {
                let resp = msg::response(
                    req,
                    src,
                    code,
                    reason,
                    Some(&to_tag),
                    &Extra::none().header("Warning", msg::warning(&why)),
                );
                self.send(&resp, src);
                self.calls.insert(
                    info.call_id.clone(),
                    UasCall {
                        state: UasState::Rejected {
                            resp,
                            at: Instant::now(),
                        },
                        receiver: None,
                    },
                );
                self.fail(&format!("INVITE rejected with {code}: {why}"));
            }
        }
    }

    /// The 200 OK for a new INVITE with everything the call needs, or why not.
    #[allow(clippy::type_complexity)]
    fn answer(
        &self,
        req: &Request,
        src: SocketAddr,
        to_tag: &str,
    ) -> Result<(Vec<u8>, Stream, Receiver), (u16, &'static str, String)> {
        let not_acceptable = |e: String| (488, "Not Acceptable Here", e);
        let offer = parse_sdp(&req.body).map_err(not_acceptable)?;
        let peer = peer_media(&offer, self.args.srtp).map_err(not_acceptable)?;
        let internal = |e: String| (500, "Server Internal Error", e);
        let media = bind_udp(SocketAddr::new(self.args.media_ip, 0), None)
            .map_err(|e| internal(format!("cannot bind a media socket: {e}")))?;
        let port = media.local.port();
        let local_key = match &peer.key {
            Some(remote) => Some(new_key(remote.tag).map_err(internal)?),
            None => None,
        };
        let (tx_srtp, rx_srtp) =
            srtp_pair(local_key.as_ref(), peer.key.as_ref()).map_err(not_acceptable)?;
        // Answer in the offer's transport when keyed (RTP/SAVP, or RTP/AVP with a=crypto as a
        // best-effort offer has it); plain otherwise.
        let proto = if self.args.srtp {
            peer.proto.as_str()
        } else {
            "RTP/AVP"
        };
        let sdp = build_sdp(
            self.args.media_ip,
            port,
            proto,
            local_key.as_ref(),
            peer.rtcp_mux,
            u64::from(port),
        );
        let ok = msg::response(
            req,
            src,
            200,
            "OK",
            Some(to_tag),
            &Extra::none()
                .header("Contact", self.contact.clone())
                .sdp(sdp.as_bytes()),
        );
        let stream = Stream::new(media.tx, peer.addr, tx_srtp, &self.rng);
        let receiver = Receiver::spawn(media.rx, rx_srtp);
        Ok((ok, stream, receiver))
    }

    fn on_ack(&mut self, id: &str) {
        let Some(c) = self.calls.get_mut(id) else {
            return;
        };
        if let UasState::Answered { stream, .. } = &mut c.state {
            if let Some(mut s) = stream.take() {
                s.stop_at = self.send_for.map(|d| Instant::now() + d);
                let stream_id = s.id;
                self.pacer.add(*s);
                c.state = UasState::Confirmed { stream_id };
            }
        }
    }

    fn fail(&mut self, why: &str) {
        self.failed += 1;
        *self.reasons.entry(why.to_string()).or_insert(0) += 1;
        log_failure("uas", &self.counters, why);
    }

    /// Stops a call's media; `failure` says why when it did not end with a BYE.
    fn end_call(&mut self, id: &str, failure: Option<&str>) {
        let Some(c) = self.calls.get_mut(id) else {
            return;
        };
        if let UasState::Confirmed { stream_id } = c.state {
            self.pacer.remove(stream_id);
        }
        c.state = UasState::Ended { at: Instant::now() };
        if let Some(r) = c.receiver.take() {
            self.finishing.spawn(r.finish());
        }
        match failure {
            None => self.ok += 1,
            Some(why) => self.fail(why),
        }
    }

    /// Retransmits unacknowledged 200s, gives up on missing ACKs, forgets old calls.
    fn housekeeping(&mut self) {
        let now = Instant::now();
        let mut lost_ack = Vec::new();
        for (id, c) in self.calls.iter_mut() {
            if let UasState::Answered {
                ok,
                src,
                next_retx,
                interval,
                give_up,
                ..
            } = &mut c.state
            {
                if now >= *give_up {
                    lost_ack.push(id.clone());
                } else if now >= *next_retx {
                    sip_send(&self.sip.tx, ok, *src, &self.counters);
                    *interval = (*interval * 2).min(T2);
                    *next_retx = now + *interval;
                }
            }
        }
        for id in lost_ack {
            self.end_call(&id, Some("no ACK for the 200 OK"));
        }
        self.calls.retain(|_, c| match c.state {
            UasState::Ended { at } | UasState::Rejected { at, .. } => {
                now.duration_since(at) < LINGER
            }
            _ => true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_offer_with_crypto_is_understood() {
        let key = new_key(2).unwrap();
        let sdp = build_sdp(
            IpAddr::from([127, 0, 0, 1]),
            4000,
            "RTP/SAVP",
            Some(&key),
            true,
            1,
        );
        let parsed = parse_sdp(sdp.as_bytes()).unwrap();
        let peer = peer_media(&parsed, true).unwrap();
        assert_eq!(peer.addr, SocketAddr::from(([127, 0, 0, 1], 4000)));
        assert_eq!(peer.key.as_ref(), Some(&key));
        assert!(peer.rtcp_mux);
        assert!(peer_media(&parsed, false).is_err(), "SAVP without --srtp");
    }

    #[test]
    fn srtp_round_trip_keeps_the_timestamp() {
        let (a, b) = (new_key(1).unwrap(), new_key(1).unwrap());
        // A sends with its key a; B decrypts with the key A declared.
        let (mut tx, _) = srtp_pair(Some(&a), Some(&b)).unwrap();
        let (_, mut rx) = srtp_pair(Some(&b), Some(&a)).unwrap();
        let mut pkt = [0xFFu8; RTP_HEADER + PAYLOAD];
        pkt[..RTP_HEADER].copy_from_slice(&[0x80, 0, 0, 7, 0, 0, 0, 160, 1, 2, 3, 4]);
        let sent: u64 = 1_700_000_000_000_000_000;
        pkt[RTP_HEADER..RTP_HEADER + 8].copy_from_slice(&sent.to_be_bytes());
        let protected = tx.as_mut().unwrap().protect_rtp(&pkt).unwrap();
        assert_eq!(
            protected.len(),
            pkt.len() + 10,
            "AES_CM_128_HMAC_SHA1_80 tag"
        );
        let mut stats = RxStats::default();
        stats.on_packet(&protected, sent + 5_000, rx.as_mut());
        assert_eq!(stats.received, 1);
        assert_eq!(stats.latencies_us, vec![5]);
        let mut tampered = protected.to_vec();
        tampered[3] = 8; // another sequence number: the tag no longer matches
        stats.on_packet(&tampered, sent, rx.as_mut());
        assert_eq!((stats.received, stats.auth_failures), (1, 1));
        let rtcp = [0x80, 200, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        stats.on_packet(&rtcp, sent, rx.as_mut());
        assert_eq!(stats.rtcp, 1);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut s = RxStats {
            latencies_us: (1..=100).rev().collect(),
            ..RxStats::default()
        };
        assert_eq!(s.percentile(50.0), Some(50));
        assert_eq!(s.percentile(99.0), Some(99));
        assert_eq!(RxStats::default().percentile(50.0), None);
    }
}
