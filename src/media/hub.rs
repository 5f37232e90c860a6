//! The media hub: every call's legacy UDP endpoint and its QUIC datagram binding.
//!
//! Two hot paths, both free of per-packet allocation in our code:
//! - QUIC → legacy: one reader per QUIC connection ([`MediaHub::run_quic_reader`]) looks the
//!   datagram's Quarter Stream ID up in a route table keyed by `(connection, qsid)` and hands the
//!   RTP packet (a slice of quinn's own `Bytes`) to the call's UDP socket with a non-blocking send.
//! - legacy → QUIC: the calls' sockets are read by a few shared tasks ([`super::poller`], one per
//!   runtime worker) into a reused buffer, and each packet is framed into a [`DatagramArena`]; the
//!   framed datagram joins its connection's `QuicSender` queue, which
//!   hands everything queued to quinn in one go once the runtime has run the other ready tasks,
//!   so that quinn packs several datagrams into one QUIC packet (one seal, one `sendmsg`) instead
//!   of sending a packet per datagram.
//!
//! Locks: `routes` is taken before any per-call lock, never the other way round; the poller's
//! handler and the per-call timer tasks only take per-call locks. All locks are std mutexes held
//! for a few instructions, never across an `.await`.

use super::dtls::DtlsIdentity;
use super::leg::{LegacyLeg, Recv, Transmit};
use super::poller::{self, Poller, Registration};
use super::rtp::{self, DatagramArena, PacketKind, FLOW_RTCP, FLOW_RTP};
use super::stale::{StaleGate, QUINN_PER_DATAGRAM};
use super::{MediaCmd, MediaEvent, Negotiated};
use crate::config::MediaConfig;
use crate::metrics::{DropReason, Metrics};
use crate::recent::Recent;
use crate::CallKey;
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// RTP from the legacy peer that arrives before the call's QUIC media stream is bound (a
/// callee that answers and talks at once) is held this long, at most this many packets, and
/// sent when the binding comes, instead of being lost.
const EARLY_MAX_PACKETS: usize = 10;
const EARLY_MAX_AGE: std::time::Duration = std::time::Duration::from_millis(200);

/// Datagrams a QUIC reader takes from quinn ahead of the one it handles.
const LOOKAHEAD: usize = 3;

/// How often a QUIC reader counts the datagrams quinn dropped from its receive queue.
const RECV_QUEUE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Route table key: quinn's `stable_id` of the connection and the Quarter Stream ID.
type RouteKey = (usize, u64);

/// How long a closed route is remembered, so that datagrams still in flight for an ended call
/// count as `closed`, not `no_route`; and how many are remembered at most.
const CLOSED_MEMORY: std::time::Duration = std::time::Duration::from_secs(10);
const CLOSED_MAX: usize = 65_536;

/// The route of the datagrams of request stream `stream_id` on `conn`: its Quarter Stream ID is
/// `stream_id / 4` (RFC 9297).
fn route_key(conn: &quinn::Connection, stream_id: u64) -> RouteKey {
    (conn.stable_id(), stream_id / 4)
}

/// A cheaply clonable handle to the media relay shared by both HTTP/3 drivers and the engine.
#[derive(Clone)]
pub struct MediaHub {
    inner: Arc<Inner>,
}

struct Inner {
    ip: std::net::IpAddr,
    default_latching: bool,
    /// Receive buffer asked for on each legacy socket, in bytes (`media.socket_rcvbuf_kib`).
    rcvbuf: usize,
    metrics: Arc<Metrics>,
    events: UnboundedSender<MediaEvent>,
    /// The gateway's DTLS certificate; DTLS-SRTP legs fail without one.
    dtls: Option<Arc<DtlsIdentity>>,
    calls: Mutex<HashMap<CallKey, Arc<CallMedia>>>,
    routes: RwLock<HashMap<RouteKey, Arc<CallMedia>>>,
    /// Routes closed in the last [`CLOSED_MEMORY`] (a route is never reused: its QUIC stream is
    /// not). Taken only when a route closes
    /// and when a datagram finds no route.
    closed: Mutex<Recent<RouteKey>>,
    /// The batching sender of each QUIC connection that carries media, by `stable_id`.
    senders: Mutex<HashMap<usize, Weak<QuicSender>>>,
    /// Reads the legacy sockets; made with the first one (it needs the runtime).
    poller: Mutex<Option<Arc<Poller<LegacySocket>>>>,
}

/// What the poller knows of a legacy socket.
#[derive(Clone)]
struct LegacySocket {
    call: Weak<CallMedia>,
    /// The RTCP port (`port + 1`) of a leg without rtcp-mux.
    rtcp: bool,
}

impl poller::Prefetch for LegacySocket {
    fn prefetch(&self) {
        CallMedia::prefetch(Weak::as_ptr(&self.call), 0);
    }

    fn prefetch_deep(&self, level: u8) {
        if level == 0 {
            CallMedia::prefetch(Weak::as_ptr(&self.call), CallMedia::HOT_BYTES);
            return;
        }
        if self.rtcp {
            return;
        }
        if let Some(m) = self.call.upgrade() {
            if let Ok(leg) = m.leg.try_lock() {
                leg.prefetch_rx(level > 1);
            }
        }
    }
}

/// The datagrams queued for one QUIC connection.
///
/// quinn builds a packet when its connection driver runs; handing it datagrams one per driver
/// run (one relay task wakes the driver, which runs next) gives a QUIC packet, an AEAD seal and a
/// `sendmsg` per RTP packet. Queued here instead, the datagrams of every relay task that ran in
/// the same scheduler pass reach quinn together ([`run_quic_sender`]). Under light load that is one
/// datagram and no added delay; under load, several per QUIC packet.
struct QuicSender {
    conn: quinn::Connection,
    /// `(datagram, is relayed RTP)`; the flag keeps the relay counters exact.
    queue: Mutex<Vec<(bytes::Bytes, bool)>>,
    ready: Arc<Notify>,
}

impl QuicSender {
    fn send(&self, d: bytes::Bytes, relayed: bool) {
        let first = {
            let mut q = lock(&self.queue);
            q.push((d, relayed));
            q.len() == 1
        };
        if first {
            self.ready.notify_one();
        }
    }

    fn stable_id(&self) -> usize {
        self.conn.stable_id()
    }
}

impl Drop for QuicSender {
    fn drop(&mut self) {
        // Lets the flush task see that the sender is gone.
        self.ready.notify_one();
    }
}

/// What the flush task last reported of its connection's path statistics.
#[derive(Default)]
struct PathSample {
    at: Option<Instant>,
    lost: u64,
    congestion: u64,
}

impl PathSample {
    /// Adds what changed since the last sample to the media QUIC counters, at most once a second.
    fn sample(&mut self, conn: &quinn::Connection, metrics: &Metrics, now: Instant) {
        if self
            .at
            .is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(1))
        {
            return;
        }
        self.at = Some(now);
        let p = conn.stats().path;
        metrics
            .quic_lost_packets
            .fetch_add(p.lost_packets.saturating_sub(self.lost), Ordering::Relaxed);
        metrics.quic_congestion_events.fetch_add(
            p.congestion_events.saturating_sub(self.congestion),
            Ordering::Relaxed,
        );
        metrics.quic_cwnd.store(p.cwnd, Ordering::Relaxed);
        metrics
            .quic_send_space
            .store(conn.datagram_send_buffer_space() as u64, Ordering::Relaxed);
        metrics
            .quic_rtt_us
            .store(p.rtt.as_micros() as u64, Ordering::Relaxed);
        (self.lost, self.congestion) = (p.lost_packets, p.congestion_events);
    }
}

/// Flushes one connection's [`QuicSender`] until the sender is dropped (no call and no reader
/// uses the connection any more). What goes to quinn passes a [`StaleGate`]: while the path
/// sends slower than media comes, what would wait in quinn's queue longer than
/// [`super::stale::MAX_QUEUE_DELAY`] is dropped instead (ADR 0019).
async fn run_quic_sender(hub: MediaHub, sender: Weak<QuicSender>, ready: Arc<Notify>, id: usize) {
    let metrics = hub.inner.metrics.clone();
    let mut batch = Vec::new();
    let mut path = PathSample::default();
    let mut gate = StaleGate::default();
    loop {
        ready.notified().await;
        // Behind every task that is ready now (deferred until the worker next polls for I/O),
        // so that their datagrams join this batch.
        tokio::task::yield_now().await;
        let Some(s) = sender.upgrade() else { break };
        std::mem::swap(&mut batch, &mut *lock(&s.queue));
        metrics.quic_flushes.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let space = s.conn.datagram_send_buffer_space();
        // quinn makes room in a full send queue by dropping its oldest datagrams, silently. One
        // look at the free space per batch tells whether that can happen; only then is each
        // datagram checked (a datagram that fits the free space drops nothing).
        let need: usize = batch
            .iter()
            .map(|(d, _)| d.len() + QUINN_PER_DATAGRAM)
            .sum();
        let may_drop = need > space;
        gate.flush(
            space,
            &mut batch,
            // What the congestion controller lets through: a window per round trip.
            || {
                let p = s.conn.stats().path;
                p.cwnd as f64 / p.rtt.as_secs_f64().max(1e-3)
            },
            |d, relayed| {
                let pushes_out = may_drop && d.len() > s.conn.datagram_send_buffer_space();
                match s.conn.send_datagram(d) {
                    Ok(()) => {
                        if pushes_out {
                            metrics.media_drop(DropReason::QuicSendQueue);
                        }
                        if relayed {
                            metrics.rtp_relayed(true);
                        }
                    }
                    Err(_) => metrics.media_drop(DropReason::QuicSend),
                }
            },
            |_| metrics.media_drop(DropReason::QuicStale),
        );
        path.sample(&s.conn, &metrics, now);
    }
    let mut senders = lock(&hub.inner.senders);
    if senders.get(&id).is_some_and(|w| w.strong_count() == 0) {
        senders.remove(&id);
    }
}

/// Media state of one call.
///
/// `repr(C)`, fields in this order: what every RTP packet touches comes first, ending with the
/// leg's own hot part ([`CallMedia::HOT_BYTES`]; the relay prefetches just those, ADR 0017).
#[repr(C)]
struct CallMedia {
    echo: AtomicBool,
    key: CallKey,
    /// RTP socket toward the legacy side, once `OpenLegacy` bound it, as registered with the
    /// poller: dropping the registration stops the reading and (with the last `Arc`) closes it.
    rtp: Mutex<Option<Registration<LegacySocket>>>,
    quic: Mutex<Option<QuicBinding>>,
    /// Addressing, ICE, DTLS and SRTP of the legacy side.
    leg: Mutex<LegacyLeg>,

    // Not touched per packet from here on.
    /// RTCP socket (port + 1), for reports on legs without rtcp-mux.
    rtcp: Mutex<Option<Registration<LegacySocket>>>,
    /// Wakes the call's timer task after something changed the leg (new timers, queued STUN
    /// or DTLS to send).
    wake: Arc<Notify>,
    /// RTP held while `quic` is empty (see [`EARLY_MAX_PACKETS`]). Locked after `quic`.
    early: Mutex<Vec<(Instant, Vec<u8>)>>,
    /// Drives the leg's timers (ICE, DTLS, RTCP reports); aborted on close.
    timer_task: Mutex<Option<JoinHandle<()>>>,
}

struct QuicBinding {
    sender: Arc<QuicSender>,
    qsid: u64,
    route: RouteKey,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update of plain data; the data is
    // still usable and the relay must keep running for the other calls.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CallMedia {
    /// Bytes from the start that the per-packet paths touch: everything up to the leg, the
    /// leg's lock (std's `Mutex` keeps its lock word ahead of the data, 8 bytes today; a
    /// different layout only makes the prefetch miss a line) and the leg's hot part.
    const HOT_BYTES: usize = std::mem::offset_of!(CallMedia, leg) + 8 + LegacyLeg::HOT_BYTES;

    /// Starts loading the reference counts ahead of the call at `p` (an `Arc`'s or `Weak`'s
    /// data pointer) and its first `bytes`. Addresses only: `p` need not be live.
    fn prefetch(p: *const CallMedia, bytes: usize) {
        let counts = 2 * std::mem::size_of::<usize>();
        super::prefetch(p.cast::<u8>().wrapping_sub(counts), counts + bytes);
    }

    fn new(key: CallKey, latching: bool) -> Self {
        CallMedia {
            key,
            echo: AtomicBool::new(false),
            rtp: Mutex::new(None),
            rtcp: Mutex::new(None),
            leg: Mutex::new(LegacyLeg::new(
                latching,
                Instant::now(),
                std::time::SystemTime::now(),
            )),
            wake: Arc::new(Notify::new()),
            quic: Mutex::new(None),
            early: Mutex::new(Vec::new()),
            timer_task: Mutex::new(None),
        }
    }

    fn has_legacy(&self) -> bool {
        lock(&self.rtp).is_some()
    }

    fn rtp_socket(&self) -> Option<Arc<UdpSocket>> {
        lock(&self.rtp).as_ref().map(|r| r.socket().clone())
    }

    fn rtcp_socket(&self) -> Option<Arc<UdpSocket>> {
        lock(&self.rtcp).as_ref().map(|r| r.socket().clone())
    }

    /// Stops reading the legacy sockets and driving the leg; the sockets close (the ports are
    /// free again) once the last packet in flight on the poller is handled.
    fn stop_tasks(&self) {
        if let Some(t) = lock(&self.timer_task).take() {
            t.abort();
        }
        lock(&self.rtp).take();
        lock(&self.rtcp).take();
    }

    /// Closes the RTCP port (`port + 1`): under rtcp-mux RTCP arrives on the RTP port.
    fn close_rtcp(&self) {
        lock(&self.rtcp).take();
    }
}

impl MediaHub {
    pub fn new(
        cfg: &MediaConfig,
        metrics: Arc<Metrics>,
        events: UnboundedSender<MediaEvent>,
    ) -> MediaHub {
        MediaHub {
            inner: Arc::new(Inner {
                ip: cfg.ip,
                default_latching: cfg.latching,
                rcvbuf: cfg.socket_rcvbuf_kib as usize * 1024,
                metrics,
                events,
                dtls: None,
                calls: Mutex::new(HashMap::new()),
                routes: RwLock::new(HashMap::new()),
                closed: Mutex::new(Recent::new(CLOSED_MEMORY, CLOSED_MAX)),
                senders: Mutex::new(HashMap::new()),
                poller: Mutex::new(None),
            }),
        }
    }

    /// The same hub with the gateway's DTLS certificate, for DTLS-SRTP legs. Call before the
    /// hub is cloned.
    pub fn with_dtls_identity(mut self, identity: Arc<DtlsIdentity>) -> MediaHub {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.dtls = Some(identity),
            None => tracing::error!("DTLS identity set on a shared media hub: ignored"),
        }
        self
    }

    fn call(&self, call: CallKey) -> Arc<CallMedia> {
        lock(&self.inner.calls)
            .entry(call)
            .or_insert_with(|| Arc::new(CallMedia::new(call, self.inner.default_latching)))
            .clone()
    }

    /// Applies one engine command. Must be called from within a tokio runtime (sockets are
    /// registered with it); outside one, `OpenLegacy` reports `BindFailed`.
    pub fn apply(&self, cmd: MediaCmd) {
        match cmd {
            MediaCmd::OpenLegacy { call, port } => self.open_legacy(call, port),
            MediaCmd::SetRemote {
                call,
                rtp,
                rtcp,
                rtcp_mux,
                latching,
            } => {
                let m = self.call(call);
                lock(&m.leg).set_remote(rtp, rtcp, latching, rtcp_mux);
                m.wake.notify_one();
                if rtcp_mux {
                    // RTCP now arrives on the RTP port (and is consumed there); release port+1.
                    m.close_rtcp();
                }
            }
            MediaCmd::Secure { call, negotiated } => {
                let Negotiated { crypto, ice } = *negotiated;
                let m = self.call(call);
                let failure = {
                    let mut leg = lock(&m.leg);
                    leg.secure(Instant::now(), crypto, ice, self.inner.dtls.as_deref());
                    leg.take_failure()
                };
                if let Some(reason) = failure {
                    report_failure(&self.inner.events, call, reason);
                }
                m.wake.notify_one();
            }
            MediaCmd::SetCodec {
                call,
                clock_rate,
                dtmf_pt,
                dtmf_as_info,
            } => {
                let m = self.call(call);
                lock(&m.leg).set_codec(Instant::now(), clock_rate, dtmf_pt, dtmf_as_info);
            }
            MediaCmd::MapPayloadTypes { call, map } => {
                let m = self.call(call);
                lock(&m.leg).map_payload_types(&map);
            }
            MediaCmd::SendDtmf { call, digit } => self.send_dtmf(call, digit),
            MediaCmd::WatchSilence { call, limit } => {
                let m = self.call(call);
                lock(&m.leg).watch_silence(Instant::now(), limit);
                // The leg's timer task picks up the new deadline.
                m.wake.notify_one();
            }
            MediaCmd::Echo { call } => {
                self.call(call).echo.store(true, Ordering::Relaxed);
            }
            MediaCmd::Close { call } => {
                let removed = lock(&self.inner.calls).remove(&call);
                if let Some(m) = removed {
                    self.drop_route(&m);
                    self.close_leg(&m);
                    m.stop_tasks();
                }
            }
        }
    }

    /// Plays a key toward the HTTP/3 side as RFC 4733 events, paced as a real sender would.
    fn send_dtmf(&self, call: CallKey, digit: super::dtmf::Digit) {
        let Some(m) = lock(&self.inner.calls).get(&call).cloned() else {
            return;
        };
        let Some(packets) = lock(&m.leg).dtmf_packets(digit) else {
            tracing::warn!(%call, "DTMF from SIP INFO dropped: no telephone-event negotiated");
            return;
        };
        let weak = Arc::downgrade(&m);
        let metrics = self.inner.metrics.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let mut arena = DatagramArena::default();
            for (offset, pkt) in packets {
                tokio::time::sleep_until(start + offset).await;
                let Some(m) = weak.upgrade() else { return };
                let q = lock(&m.quic);
                let sent = q.as_ref().and_then(|b| {
                    let d = arena.frame(b.qsid, FLOW_RTP, &pkt)?;
                    b.sender.send(d, false);
                    Some(())
                });
                if sent.is_none() {
                    metrics.media_drop(DropReason::QuicSend);
                }
            }
        });
    }

    /// Says goodbye in RTCP and records the leg's statistics (metrics and the call's media log line).
    fn close_leg(&self, m: &CallMedia) {
        let Some(sock) = m.rtp_socket() else {
            return;
        };
        let (bye, stats, security) = {
            let mut leg = lock(&m.leg);
            (leg.bye(Instant::now()), leg.stats(), leg.security_label())
        };
        if let Some(t) = bye {
            send_transmit(&sock, m.rtcp_socket().as_deref(), &t);
        }
        self.inner.metrics.legacy_call_stats(&stats);
        tracing::info!(
            call = %m.key,
            security,
            packets_received = stats.packets_received,
            packets_lost = stats.packets_lost,
            jitter_ms = format_args!("{:.1}", stats.jitter_ms),
            rtt_ms = stats.rtt_ms.map(|r| format!("{r:.1}")).unwrap_or_else(|| "-".into()),
            packets_sent = stats.packets_sent,
            peer_lost = stats.remote_packets_lost.unwrap_or(0),
            "legacy media ended"
        );
    }

    fn open_legacy(&self, call: CallKey, port: u16) {
        let fail = |reason: String| {
            tracing::warn!(%call, port, %reason, "media bind failed");
            let _ = self
                .inner
                .events
                .send(MediaEvent::BindFailed { call, port, reason });
        };
        // Port 0 asks the OS for any port, for both sockets (tests use it).
        let rtcp_port = if port == 0 { 0 } else { port.wrapping_add(1) };
        if port != 0 && rtcp_port == 0 {
            return fail("no room for RTCP on port+1".into());
        }
        let rtp = match self.bind(port) {
            Ok(s) => Arc::new(s),
            Err(e) => return fail(e.to_string()),
        };
        let rtcp = match self.bind(rtcp_port) {
            Ok(s) => Arc::new(s),
            Err(e) => return fail(format!("RTCP port {rtcp_port}: {e}")),
        };
        let poller = match self.poller() {
            Ok(p) => p,
            Err(e) => return fail(format!("media poller: {e}")),
        };
        let m = self.call(call);
        m.stop_tasks();
        let item = |rtcp| LegacySocket {
            call: Arc::downgrade(&m),
            rtcp,
        };
        let regs = poller
            .register(rtp, item(false))
            .and_then(|r| Ok((r, poller.register(rtcp, item(true))?)));
        let (rtp_reg, rtcp_reg) = match regs {
            Ok(r) => r,
            Err(e) => return fail(format!("media poller: {e}")),
        };
        *lock(&m.rtp) = Some(rtp_reg);
        *lock(&m.rtcp) = Some(rtcp_reg);
        let timer_task = tokio::spawn(leg_timer_task(
            Arc::downgrade(&m),
            m.wake.clone(),
            self.inner.metrics.clone(),
            self.inner.events.clone(),
        ));
        *lock(&m.timer_task) = Some(timer_task);
    }

    fn bind(&self, port: u16) -> io::Result<UdpSocket> {
        bind_legacy(SocketAddr::new(self.inner.ip, port), self.inner.rcvbuf)
    }

    /// The legacy socket poller, made on first use: one shard per runtime worker.
    fn poller(&self) -> io::Result<Arc<Poller<LegacySocket>>> {
        let mut p = lock(&self.inner.poller);
        if let Some(p) = p.as_ref() {
            return Ok(p.clone());
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("no tokio runtime to read the sockets on"))?;
        let workers = runtime.metrics().num_workers();
        let (metrics, events) = (&self.inner.metrics, &self.inner.events);
        let made = Arc::new(Poller::new(workers, || {
            legacy_handler(metrics.clone(), events.clone())
        })?);
        *p = Some(made.clone());
        Ok(made)
    }

    /// The local address of the call's legacy RTP socket, once bound.
    pub fn legacy_addr(&self, call: CallKey) -> Option<SocketAddr> {
        let m = lock(&self.inner.calls).get(&call).cloned()?;
        let sock = m.rtp_socket()?;
        sock.local_addr().ok()
    }

    /// Routes the call's datagrams over `conn`, Quarter Stream ID `stream_id / 4` (RFC 9297).
    /// Replaces an earlier binding of the same call.
    pub fn bind_quic(&self, call: CallKey, conn: quinn::Connection, stream_id: u64) {
        let m = self.call(call);
        let route = route_key(&conn, stream_id);
        let qsid = route.1;
        let sender = self.sender(&conn);
        let mut routes = self.inner.routes.write().unwrap_or_else(|e| e.into_inner());
        let mut q = lock(&m.quic);
        // What the legacy peer sent before this binding existed, if still fresh.
        let early = std::mem::take(&mut *lock(&m.early));
        let now = Instant::now();
        // Most calls have nothing held: the arena (a 4 KiB buffer) is made only for those that do.
        if !early.is_empty() {
            let mut arena = DatagramArena::default();
            for (at, pkt) in early {
                if now.duration_since(at) > EARLY_MAX_AGE {
                    self.inner.metrics.media_drop(DropReason::NoRoute);
                    continue;
                }
                match arena.frame(qsid, FLOW_RTP, &pkt) {
                    Some(d) => sender.send(d, true),
                    None => self.inner.metrics.media_drop(DropReason::QuicSend),
                }
            }
        }
        let old = q.replace(QuicBinding {
            sender,
            qsid,
            route,
        });
        drop(q);
        if let Some(old) = old {
            if old.route != route {
                routes.remove(&old.route);
                lock(&self.inner.closed).insert(now, old.route, ());
            }
        }
        routes.insert(route, m.clone());
    }

    /// Routes the datagrams that arrive on `conn` with Quarter Stream ID `stream_id / 4` to the
    /// call before it is bound ([`MediaHub::bind_quic`]). A client calls this as soon as its media
    /// CONNECT is sent: the peer binds on receiving it and at once sends the media it held for the
    /// call, which can arrive before the CONNECT's `200` is read here. Nothing goes toward QUIC
    /// until the binding; [`MediaHub::unroute_quic`] undoes this if the CONNECT fails.
    pub fn route_quic(&self, call: CallKey, conn: &quinn::Connection, stream_id: u64) {
        let m = self.call(call);
        let route = route_key(conn, stream_id);
        let mut routes = self.inner.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.insert(route, m);
    }

    /// Removes a route set by [`MediaHub::route_quic`] whose CONNECT failed, unless the call was
    /// bound to it since.
    pub fn unroute_quic(&self, call: CallKey, conn: &quinn::Connection, stream_id: u64) {
        let route = route_key(conn, stream_id);
        let mut routes = self.inner.routes.write().unwrap_or_else(|e| e.into_inner());
        let Some(m) = routes.get(&route).filter(|m| m.key == call).cloned() else {
            return;
        };
        if lock(&m.quic).as_ref().is_some_and(|b| b.route == route) {
            return;
        }
        routes.remove(&route);
        drop(routes);
        self.forget_if_unused(&m);
    }

    /// Stops sending the call's media over QUIC. The call's legacy side stays open.
    pub fn unbind_quic(&self, call: CallKey) {
        let Some(m) = lock(&self.inner.calls).get(&call).cloned() else {
            return;
        };
        self.drop_route(&m);
        self.forget_if_unused(&m);
    }

    /// Forgets a call that only ever existed on the QUIC side (no socket, no echo) once it has no
    /// binding left.
    fn forget_if_unused(&self, m: &Arc<CallMedia>) {
        if !m.has_legacy() && !m.echo.load(Ordering::Relaxed) && lock(&m.quic).is_none() {
            let mut calls = lock(&self.inner.calls);
            if calls.get(&m.key).is_some_and(|c| Arc::ptr_eq(c, m)) {
                calls.remove(&m.key);
            }
        }
    }

    /// Like [`MediaHub::unbind_quic`], but only if the call is still bound to this very stream:
    /// a media stream that ends after the call was re-bound elsewhere must not cut the new one.
    pub fn unbind_quic_stream(&self, call: CallKey, conn: &quinn::Connection, stream_id: u64) {
        let route = route_key(conn, stream_id);
        let current = lock(&self.inner.calls).get(&call).cloned();
        if current.is_some_and(|m| lock(&m.quic).as_ref().is_some_and(|b| b.route == route)) {
            self.unbind_quic(call);
        }
    }

    fn drop_route(&self, m: &Arc<CallMedia>) {
        let mut routes = self.inner.routes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = lock(&m.quic).take() {
            if routes.get(&b.route).is_some_and(|c| Arc::ptr_eq(c, m)) {
                routes.remove(&b.route);
                drop(routes);
                lock(&self.inner.closed).insert(Instant::now(), b.route, ());
            }
        }
    }

    /// Number of `(connection, qsid)` routes; for tests and the admin page.
    pub fn route_count(&self) -> usize {
        self.inner
            .routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// The connection's batching sender, created (with its flush task) on first use.
    fn sender(&self, conn: &quinn::Connection) -> Arc<QuicSender> {
        let id = conn.stable_id();
        let mut senders = lock(&self.inner.senders);
        if let Some(s) = senders.get(&id).and_then(Weak::upgrade) {
            return s;
        }
        let ready = Arc::new(Notify::new());
        let s = Arc::new(QuicSender {
            conn: conn.clone(),
            queue: Mutex::new(Vec::new()),
            ready: ready.clone(),
        });
        senders.insert(id, Arc::downgrade(&s));
        drop(senders);
        tokio::spawn(run_quic_sender(
            self.clone(),
            Arc::downgrade(&s),
            ready,
            s.stable_id(),
        ));
        s
    }

    /// Starts loading the state of the call that datagram `d` of connection `conn_id` goes to:
    /// `level` 0 the call itself, 1 its SRTP sending half, 2 what that half points to. Each
    /// level is asked a datagram's send (a system call) after the one before it.
    fn prefetch_call(&self, conn_id: usize, d: &[u8], level: u8) {
        let Some(h) = rtp::parse_datagram(d) else {
            return;
        };
        let routes = self.inner.routes.read().unwrap_or_else(|e| e.into_inner());
        let Some(m) = routes.get(&(conn_id, h.qsid)) else {
            return;
        };
        if level == 0 {
            CallMedia::prefetch(Arc::as_ptr(m), CallMedia::HOT_BYTES);
        } else if let Ok(leg) = m.leg.try_lock() {
            leg.prefetch_tx(level > 1);
        }
    }

    /// Reads every datagram of one QUIC connection until it closes. Spawn once per connection.
    pub async fn run_quic_reader(self, conn: quinn::Connection) {
        let id = conn.stable_id();
        // Held for the connection's life: echoed datagrams go through it, and calls bound to
        // this connection find it.
        let sender = self.sender(&conn);
        let metrics = &self.inner.metrics;
        // SRTP toward the legacy side is written here (one buffer per connection, reused).
        let mut srtp = Vec::with_capacity(poller::RECV_BUF);
        let mut queue = RecvQueueCheck::new(Instant::now());
        // Datagrams taken from quinn before their turn, so that their calls' state is on its way
        // into the cache while the ones before them are sent (see [`MediaHub::prefetch_call`]).
        // Each with the prefetch level it gets next: one level per datagram handled, so that
        // each level's lines had a send's time to arrive before the next level reads them.
        let mut ahead: std::collections::VecDeque<(bytes::Bytes, u8)> =
            std::collections::VecDeque::with_capacity(LOOKAHEAD + 1);
        loop {
            let d = match ahead.pop_front() {
                Some((d, _)) => d,
                None => match conn.read_datagram().await {
                    Ok(d) => {
                        queue.read += 1;
                        d
                    }
                    Err(_) => break,
                },
            };
            for (next, level) in ahead.iter_mut() {
                if *level <= 2 {
                    self.prefetch_call(id, next, *level);
                    *level += 1;
                }
            }
            // Two at most per datagram handled: a whole refill at once asks for more lines
            // than the CPU keeps in flight.
            for _ in 0..2 {
                if ahead.len() >= LOOKAHEAD {
                    break;
                }
                use futures_util::FutureExt;
                match conn.read_datagram().now_or_never() {
                    Some(Ok(next)) => {
                        queue.read += 1;
                        self.prefetch_call(id, &next, 0);
                        ahead.push_back((next, 1));
                    }
                    // Nothing queued, or closed: the next read waits or reports it.
                    _ => break,
                }
            }
            let now = Instant::now();
            if now >= queue.next {
                ahead.extend(queue.check(&conn, now, metrics).map(|d| (d, 0)));
            }
            let Some(h) = rtp::parse_datagram(&d) else {
                metrics.media_drop(DropReason::Malformed);
                continue;
            };
            let routes = self.inner.routes.read().unwrap_or_else(|e| e.into_inner());
            let Some(m) = routes.get(&(id, h.qsid)) else {
                drop(routes);
                metrics.media_drop(if lock(&self.inner.closed).contains(now, &(id, h.qsid)) {
                    DropReason::Closed
                } else {
                    DropReason::NoRoute
                });
                continue;
            };
            let pkt = &d[h.payload_offset..];
            match (h.flow, rtp::classify(pkt)) {
                (FLOW_RTP, PacketKind::Rtp) => {
                    if m.echo.load(Ordering::Relaxed) {
                        // The datagram already carries this stream's QSID: send it back whole.
                        sender.send(d.clone(), false);
                        continue;
                    }
                    // Held for the send: the socket stays open (and its descriptor ours) while
                    // its registration is in place.
                    let rtp = lock(&m.rtp);
                    let Some(reg) = rtp.as_ref() else {
                        metrics.media_drop(DropReason::NoRoute);
                        continue;
                    };
                    let (sent, digits) = {
                        let mut leg = lock(&m.leg);
                        let sent = leg.on_send(now, pkt, &mut srtp).map(|(to, bytes)| {
                            socket2::SockRef::from(&reg.fd())
                                .send_to(bytes, &to.into())
                                .map_err(|_| DropReason::UdpSend)
                        });
                        (sent, leg.take_digits())
                    };
                    drop(rtp);
                    for (digit, toward_legacy) in digits {
                        let _ = self.inner.events.send(MediaEvent::Dtmf {
                            call: m.key,
                            digit,
                            toward_legacy,
                        });
                    }
                    match sent {
                        Ok(Ok(_)) => metrics.rtp_relayed(false),
                        Ok(Err(r)) | Err(r) => metrics.media_drop(r),
                    }
                }
                // RTCP is terminated per leg: counted, not forwarded.
                (FLOW_RTCP, PacketKind::Rtcp) => {
                    metrics.rtcp_received.fetch_add(1, Ordering::Relaxed);
                }
                _ => metrics.media_drop(DropReason::Malformed),
            }
        }
        // Closed, and quinn hands out what it still queued before it reports that: every
        // datagram it counted was read or dropped.
        queue.caught_up(conn.stats().frame_rx.datagram, metrics);
        // The connection is gone: its routes can never match again.
        let mut routes = self.inner.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.retain(|k, m| {
            if k.0 != id {
                return true;
            }
            let mut q = lock(&m.quic);
            if q.as_ref().is_some_and(|b| b.route == *k) {
                q.take();
            }
            false
        });
    }
}

/// Counts the datagrams quinn dropped from one connection's receive queue (it drops the oldest
/// when the reader falls behind, and keeps no count of its own). quinn counts every DATAGRAM
/// frame it accepted. Once that count has been taken and the queue is then seen empty, each
/// frame in the count was either read here or dropped.
struct RecvQueueCheck {
    /// Datagrams taken from quinn's queue.
    read: u64,
    /// Drops found so far.
    dropped: u64,
    /// When to look next.
    next: Instant,
}

impl RecvQueueCheck {
    fn new(now: Instant) -> Self {
        RecvQueueCheck {
            read: 0,
            dropped: 0,
            next: now + RECV_QUEUE_CHECK,
        }
    }

    /// Counts the drops if quinn's queue is empty; otherwise returns the datagram found there
    /// (taken, the caller handles it next) and looks again shortly.
    fn check(
        &mut self,
        conn: &quinn::Connection,
        now: Instant,
        metrics: &Metrics,
    ) -> Option<bytes::Bytes> {
        use futures_util::FutureExt;
        let accepted = conn.stats().frame_rx.datagram;
        match conn.read_datagram().now_or_never() {
            None => {
                self.caught_up(accepted, metrics);
                self.next = now + RECV_QUEUE_CHECK;
                None
            }
            Some(Ok(d)) => {
                self.read += 1;
                self.next = now + std::time::Duration::from_millis(10);
                Some(d)
            }
            // Closed with nothing queued: the next read reports it.
            Some(Err(_)) => None,
        }
    }

    /// `accepted` frames, none of them still queued.
    fn caught_up(&mut self, accepted: u64, metrics: &Metrics) {
        let lost = accepted.saturating_sub(self.read);
        if lost > self.dropped {
            metrics.media_drops(DropReason::QuicRecvQueue, lost - self.dropped);
            self.dropped = lost;
        }
    }
}

fn report_failure(events: &UnboundedSender<MediaEvent>, call: CallKey, reason: String) {
    tracing::error!(%call, %reason, "legacy media security failed: no media on this call");
    let _ = events.send(MediaEvent::SecurityFailed { call, reason });
}

fn send_transmit(rtp: &UdpSocket, rtcp: Option<&UdpSocket>, t: &Transmit) -> bool {
    let sock = if t.from_rtcp_port {
        rtcp.unwrap_or(rtp)
    } else {
        rtp
    };
    match sock.send_to(&t.bytes, t.to) {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(to = %t.to, error = %e, "STUN/DTLS/RTCP send failed");
            false
        }
    }
}

/// Sends what the leg queued (STUN answers and checks, DTLS flights, RTCP reports) and reports
/// a failure, and the peer's silence.
fn flush(
    sock: &UdpSocket,
    m: &CallMedia,
    metrics: &Metrics,
    events: &UnboundedSender<MediaEvent>,
    now: Instant,
) {
    let rtcp = m.rtcp_socket();
    let (failure, silence) = {
        let mut leg = lock(&m.leg);
        while let Some(t) = leg.poll_transmit(now) {
            if send_transmit(sock, rtcp.as_deref(), &t)
                && t.bytes.get(1).is_some_and(|b| (200..=204).contains(b))
            {
                metrics.rtcp_sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        (leg.take_failure(), leg.take_silence())
    };
    if let Some(reason) = failure {
        report_failure(events, m.key, reason);
    }
    if let Some(silent_for) = silence {
        tracing::info!(call = %m.key, ?silent_for, "nothing heard from the legacy peer");
        let _ = events.send(MediaEvent::Silent {
            call: m.key,
            silent_for,
        });
    }
}

/// What the poller's handler does after one datagram.
enum Next {
    Read,
    /// The leg queued something to send (STUN answer, DTLS flight).
    Flush,
}

/// A legacy media socket: non-blocking, asking for a receive buffer of `rcvbuf` bytes. The
/// kernel default (208 KiB) holds about five seconds of a G.711 call on loopback: a gateway that
/// falls behind would relay seconds-old audio rather than drop it (ADR 0019).
fn bind_legacy(addr: SocketAddr, rcvbuf: usize) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    socket2::SockRef::from(&s).set_recv_buffer_size(rcvbuf)?;
    Ok(s)
}

/// One datagram from the legacy peer on the RTP port: STUN and DTLS go to the leg, RTCP is
/// terminated, RTP is unprotected and relayed to the QUIC binding (or held until there is one).
fn on_legacy_datagram(
    m: &CallMedia,
    now: Instant,
    src: SocketAddr,
    pkt: &mut [u8],
    arena: &mut DatagramArena,
    metrics: &Metrics,
    events: &UnboundedSender<MediaEvent>,
) -> Next {
    let mut leg = lock(&m.leg);
    let plain = match leg.on_recv(now, src, pkt) {
        Recv::Rtp(p) => {
            for (digit, toward_legacy) in leg.take_digits() {
                let _ = events.send(MediaEvent::Dtmf {
                    call: m.key,
                    digit,
                    toward_legacy,
                });
            }
            p
        }
        Recv::Rtcp(_) => {
            metrics.rtcp_received.fetch_add(1, Ordering::Relaxed);
            return Next::Read;
        }
        Recv::Consumed => return Next::Flush,
        Recv::Drop(reason) => {
            metrics.media_drop(reason);
            return Next::Read;
        }
    };
    drop(leg);
    let q = lock(&m.quic);
    let Some(b) = q.as_ref() else {
        let mut early = lock(&m.early);
        early.retain(|(at, _)| now.duration_since(*at) <= EARLY_MAX_AGE);
        if early.len() < EARLY_MAX_PACKETS {
            early.push((now, plain.to_vec()));
        } else {
            metrics.media_drop(DropReason::NoRoute);
        }
        return Next::Read;
    };
    match arena.frame(b.qsid, FLOW_RTP, &plain) {
        Some(d) => b.sender.send(d, true),
        None => metrics.media_drop(DropReason::NoRoute),
    }
    Next::Read
}

/// The poller's handler (one per shard): RTP ports go to [`on_legacy_datagram`]; the RTCP port of
/// a leg without rtcp-mux feeds the leg's statistics (RTCP is terminated per leg, not relayed).
fn legacy_handler(
    metrics: Arc<Metrics>,
    events: UnboundedSender<MediaEvent>,
) -> impl poller::Handler<LegacySocket> {
    let mut arena = DatagramArena::default();
    move |item: &LegacySocket, sock: &UdpSocket, pkt: &mut [u8], src: SocketAddr| {
        let Some(m) = item.call.upgrade() else { return };
        let now = Instant::now();
        if !item.rtcp {
            if let Next::Flush =
                on_legacy_datagram(&m, now, src, pkt, &mut arena, &metrics, &events)
            {
                flush(sock, &m, &metrics, &events, now);
                // The leg's deadlines may have moved (ICE checks, DTLS retransmissions).
                m.wake.notify_one();
            }
            return;
        }
        if rtp::classify(pkt) != PacketKind::Rtcp {
            metrics.media_drop(DropReason::Malformed);
            return;
        }
        let mut leg = lock(&m.leg);
        match leg.on_recv(now, src, pkt) {
            Recv::Rtcp(_) => {
                metrics.rtcp_received.fetch_add(1, Ordering::Relaxed);
            }
            Recv::Drop(r) => metrics.media_drop(r),
            Recv::Rtp(_) | Recv::Consumed => metrics.media_drop(DropReason::Malformed),
        }
    }
}

/// Drives the leg's timers (ICE checks and consent, DTLS retransmissions, RTCP reports) and sends
/// what commands queued on it. Holds the call weakly so that `Close` (which drops the strong
/// references) ends it too.
async fn leg_timer_task(
    call: Weak<CallMedia>,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    events: UnboundedSender<MediaEvent>,
) {
    // "No timer": a fixed instant far enough away, so that an idle leg does not move its
    // deadline (and re-arm the timer) each time round.
    let never = Instant::now() + std::time::Duration::from_secs(86_400 * 365);
    // One timer for the task's life, moved only when the leg's deadline changes (RTCP reports
    // every few seconds; ICE and DTLS during setup).
    let timer = tokio::time::sleep_until(never.into());
    tokio::pin!(timer);
    loop {
        let deadline = {
            let Some(m) = call.upgrade() else { return };
            let t = lock(&m.leg).poll_timeout();
            t.unwrap_or(never)
        };
        if timer.deadline() != deadline.into() || timer.is_elapsed() {
            timer.as_mut().reset(deadline.into());
        }
        let fired = tokio::select! {
            _ = &mut timer => true,
            _ = wake.notified() => false,
        };
        let Some(m) = call.upgrade() else { return };
        let Some(sock) = m.rtp_socket() else {
            return;
        };
        let now = Instant::now();
        if fired {
            lock(&m.leg).handle_timeout(now);
        }
        flush(&sock, &m, &metrics, &events, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn hub() -> (MediaHub, mpsc::UnboundedReceiver<MediaEvent>, Arc<Metrics>) {
        let cfg = MediaConfig {
            ip: "127.0.0.1".parse().unwrap(),
            port_min: 0,
            port_max: 0,
            latching: true,
            ..MediaConfig::default()
        };
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = mpsc::unbounded_channel();
        (MediaHub::new(&cfg, metrics.clone(), tx), rx, metrics)
    }

    /// A UDP socket standing for the legacy peer, reads timing out after `secs`.
    fn sink(secs: u64) -> std::net::UdpSocket {
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(std::time::Duration::from_secs(secs)))
            .unwrap();
        sink
    }

    /// Opens `call`'s legacy leg on `h`, sending plain RTP (rtcp-mux) to `to`.
    fn open_toward(h: &MediaHub, call: CallKey, to: SocketAddr) {
        h.apply(MediaCmd::OpenLegacy { call, port: 0 });
        h.apply(MediaCmd::SetRemote {
            call,
            rtp: to,
            rtcp: None,
            rtcp_mux: true,
            latching: false,
        });
    }

    /// What each packet touches of a call stays in a few cache lines (ADR 0017): a field added
    /// ahead of the "not touched per packet" marks grows every prefetch.
    #[test]
    fn the_per_packet_part_of_a_call_is_a_few_cache_lines() {
        let (hot, all) = (CallMedia::HOT_BYTES, std::mem::size_of::<CallMedia>());
        eprintln!("CallMedia: {hot} of {all} bytes touched per packet");
        assert!(hot + 16 <= 7 * 64, "{hot} of {all} bytes");
        assert!(hot < all / 2, "{hot} of {all} bytes");
    }

    #[tokio::test]
    async fn bind_failure_is_reported() {
        let (hub, mut rx, _) = hub();
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        hub.apply(MediaCmd::OpenLegacy {
            call: CallKey(1),
            port,
        });
        match rx.recv().await {
            Some(MediaEvent::BindFailed { call, port: p, .. }) => {
                assert_eq!(call, CallKey(1));
                assert_eq!(p, port);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_silent_peer_is_reported_once_and_one_that_sends_is_not() {
        let (hub, mut rx, _) = hub();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for call in [CallKey(7), CallKey(8)] {
            hub.apply(MediaCmd::OpenLegacy { call, port: 0 });
            hub.apply(MediaCmd::SetRemote {
                call,
                rtp: peer.local_addr().unwrap(),
                rtcp: None,
                rtcp_mux: true,
                latching: true,
            });
            hub.apply(MediaCmd::WatchSilence {
                call,
                limit: Some(std::time::Duration::from_millis(600)),
            });
        }
        // Call 8's peer sends RTP every 50 ms for 1.5 s; call 7's sends nothing.
        let to = hub.legacy_addr(CallKey(8)).unwrap();
        let started = Instant::now();
        let mut silent = Vec::new();
        for seq in 0..30u16 {
            peer.send_to(&rtp::pcmu_packet(seq, 0x5eed), to).unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            while let Ok(e) = rx.try_recv() {
                silent.push(e);
            }
        }
        assert!(started.elapsed() >= std::time::Duration::from_millis(1500));
        match silent.as_slice() {
            [MediaEvent::Silent { call, silent_for }] => {
                assert_eq!(*call, CallKey(7));
                assert!(*silent_for >= std::time::Duration::from_millis(600));
            }
            other => panic!("one silence, call 7's: {other:?}"),
        }
    }

    #[test]
    fn a_legacy_sockets_queue_is_bounded_by_the_configured_buffer_not_the_kernel_default() {
        // Ten seconds of a G.711 SRTP stream arrive while nobody reads: how many wait?
        let queued = |rcvbuf: Option<usize>| {
            let sock = match rcvbuf {
                Some(b) => bind_legacy("127.0.0.1:0".parse().unwrap(), b).unwrap(),
                None => UdpSocket::bind("127.0.0.1:0").unwrap(),
            };
            sock.set_nonblocking(true).unwrap();
            let to = sock.local_addr().unwrap();
            let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
            for _ in 0..500 {
                peer.send_to(&[0x80; 182], to).unwrap();
            }
            let mut buf = [0u8; poller::RECV_BUF];
            std::iter::from_fn(|| sock.recv(&mut buf).ok()).count()
        };
        let default_kib = MediaConfig::default().socket_rcvbuf_kib as usize;
        let (small, ours, kernel) = (
            queued(Some(8 << 10)),
            queued(Some(default_kib << 10)),
            queued(None),
        );
        assert!(small >= 4, "8 KiB holds a few packets: {small}");
        assert!(small < ours, "{small} < {ours}");
        assert!(
            ours * 2 < kernel,
            "{ours} is well below the default's {kernel}"
        );
    }

    #[tokio::test]
    async fn close_releases_the_call() {
        let (hub, _rx, _) = hub();
        hub.apply(MediaCmd::OpenLegacy {
            call: CallKey(2),
            port: 0,
        });
        assert!(hub.legacy_addr(CallKey(2)).is_some());
        hub.apply(MediaCmd::Close { call: CallKey(2) });
        assert!(hub.legacy_addr(CallKey(2)).is_none());
    }

    /// Why the engine quarantines a released port (`PortPool`): a closed call's sockets live
    /// until the runtime drops its aborted tasks, so reopening the port at once can fail.
    #[tokio::test]
    async fn a_closed_port_is_free_again_once_the_runtime_ran() {
        let (hub, mut rx, _) = hub();
        // An even port whose RTCP neighbour is free too (another process may take one between
        // the probe and the open: try again rather than learn nothing).
        let port = (0..50)
            .find_map(|_| {
                let probe = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
                let port = probe.local_addr().ok()?.port() & !1;
                drop(probe);
                hub.apply(MediaCmd::OpenLegacy {
                    call: CallKey(5),
                    port,
                });
                match rx.try_recv() {
                    Ok(MediaEvent::BindFailed { .. }) => None,
                    _ => hub.legacy_addr(CallKey(5)).map(|_| port),
                }
            })
            .expect("a free even port pair on loopback");
        hub.apply(MediaCmd::Close { call: CallKey(5) });
        tokio::task::yield_now().await;
        hub.apply(MediaCmd::OpenLegacy {
            call: CallKey(6),
            port,
        });
        assert!(
            rx.try_recv().is_err(),
            "reopening after the runtime ran must bind"
        );
        assert!(hub.legacy_addr(CallKey(6)).is_some());
    }

    /// What the QUIC sender is for: the datagrams of calls whose packets arrive together reach
    /// quinn in one batch and share QUIC packets, and none is lost. (One worker: with the
    /// multi-thread scheduler's LIFO slot, a datagram handed straight to quinn would run its
    /// connection driver before the next call's task, one QUIC packet per datagram.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn datagrams_queued_together_share_quic_packets() {
        const CALLS: u64 = 20;
        let pair = crate::media::loopback::quic_pair().await.unwrap();
        let (a, _rx_a, metrics_a) = hub();
        let (b, _rx_b, _) = hub();
        let sink = sink(5);
        let src = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut inputs = Vec::new();
        for i in 0..CALLS {
            let call = CallKey(100 + i);
            open_toward(&a, call, src.local_addr().unwrap());
            open_toward(&b, call, sink.local_addr().unwrap());
            a.bind_quic(call, pair.client_conn.clone(), 4 * i);
            b.bind_quic(call, pair.server_conn.clone(), 4 * i);
            inputs.push(a.legacy_addr(call).unwrap());
        }
        tokio::spawn(b.clone().run_quic_reader(pair.server_conn.clone()));
        // Let every socket task register with the reactor before the burst.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let before = pair.client_conn.stats();
        let flushes_before = metrics_a.quic_flushes.load(Ordering::Relaxed);
        // Sent from a task on the only worker, so the whole burst is queued before the worker
        // next polls for I/O.
        tokio::spawn(async move {
            for (i, to) in inputs.iter().enumerate() {
                src.send_to(&rtp::pcmu_packet(i as u16, 0x5eed), to)
                    .unwrap();
            }
        })
        .await
        .unwrap();
        let got = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 2048];
            (0..CALLS)
                .take_while(|_| sink.recv_from(&mut buf).is_ok())
                .count() as u64
        })
        .await
        .unwrap();
        assert_eq!(got, CALLS, "every packet crossed the connection");
        let after = pair.client_conn.stats();
        let datagrams = after.frame_tx.datagram - before.frame_tx.datagram;
        let packets = after.udp_tx.datagrams - before.udp_tx.datagrams;
        let flushes = metrics_a.quic_flushes.load(Ordering::Relaxed) - flushes_before;
        assert_eq!(datagrams, CALLS);
        assert!(
            packets * 2 <= datagrams,
            "{datagrams} datagrams took {packets} QUIC packets ({flushes} flushes)"
        );
        assert!(flushes <= 2, "{flushes} flushes for one burst");
    }

    /// The peer binds when it receives the media CONNECT and at once sends what it held for the
    /// call; those datagrams can arrive before the CONNECT's `200` is read. A route set when the
    /// CONNECT goes out delivers them. The route of a CONNECT that failed is taken back, one the
    /// call was bound to is not.
    #[tokio::test]
    async fn datagrams_ahead_of_the_binding_follow_the_route_set_at_connect() {
        let pair = crate::media::loopback::quic_pair().await.unwrap();
        let (a, _rx_a, metrics_a) = hub();
        let (b, _rx_b, _) = hub();
        let sink = sink(3);
        let call = CallKey(7);
        let src = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        open_toward(&a, call, sink.local_addr().unwrap());
        open_toward(&b, call, src.local_addr().unwrap());
        // A has sent its CONNECT (stream 0) and not yet read the answer; B has bound.
        a.route_quic(call, &pair.client_conn, 0);
        tokio::spawn(a.clone().run_quic_reader(pair.client_conn.clone()));
        b.bind_quic(call, pair.server_conn.clone(), 0);
        let to_b = b.legacy_addr(call).unwrap();
        tokio::task::spawn_blocking(move || {
            src.send_to(&rtp::pcmu_packet(1, 0x5eed), to_b).unwrap();
        })
        .await
        .unwrap();
        // A's leg may send its RTCP there too: wait for the RTP packet.
        let got = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, _)) = sink.recv_from(&mut buf) {
                if rtp::classify(&buf[..n]) == PacketKind::Rtp {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap();
        assert!(
            got,
            "the datagram ahead of A's binding did not reach A's legacy peer"
        );
        assert_eq!(metrics_a.rtp_quic_to_sip.load(Ordering::Relaxed), 1);
        assert_eq!(a.route_count(), 1);

        // The CONNECT was refused: its route goes.
        a.unroute_quic(call, &pair.client_conn, 0);
        assert_eq!(a.route_count(), 0);
        // A CONNECT that succeeded: the binding keeps the route.
        a.route_quic(call, &pair.client_conn, 4);
        a.bind_quic(call, pair.client_conn.clone(), 4);
        a.unroute_quic(call, &pair.client_conn, 4);
        assert_eq!(a.route_count(), 1, "a bound route stays");
    }

    /// The reader takes datagrams from quinn ahead of their turn (to prefetch their calls'
    /// state); a burst for one call still leaves toward the legacy side whole and in order.
    #[tokio::test]
    async fn a_burst_read_ahead_keeps_its_order() {
        const BURST: u16 = 200;
        let pair = crate::media::loopback::quic_pair().await.unwrap();
        let (b, _rx, _) = hub();
        let sink = sink(5);
        let call = CallKey(9);
        open_toward(&b, call, sink.local_addr().unwrap());
        b.bind_quic(call, pair.server_conn.clone(), 4 * 3);
        let mut arena = DatagramArena::default();
        for seq in 0..BURST {
            let d = arena
                .frame(3, FLOW_RTP, &rtp::pcmu_packet(seq, 0x5eed))
                .unwrap();
            pair.client_conn.send_datagram_wait(d).await.unwrap();
        }
        // All queued in quinn before the reader starts: it reads ahead from the first one.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        tokio::spawn(b.clone().run_quic_reader(pair.server_conn.clone()));
        let seqs = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 2048];
            (0..BURST)
                .map_while(|_| {
                    let (n, _) = sink.recv_from(&mut buf).ok()?;
                    (n >= rtp::RTP_HEADER_LEN).then(|| u16::from_be_bytes([buf[2], buf[3]]))
                })
                .collect::<Vec<u16>>()
        })
        .await
        .unwrap();
        assert_eq!(seqs, (0..BURST).collect::<Vec<_>>());
    }

    fn dropped(metrics: &Metrics, reason: DropReason) -> u64 {
        metrics.media_dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// A 1000-byte datagram of flow RTP on Quarter Stream `qsid`.
    fn big_datagram(qsid: u64) -> bytes::Bytes {
        DatagramArena::default()
            .frame(qsid, FLOW_RTP, &[0x80; 1000])
            .unwrap()
    }

    /// quinn drops the oldest datagrams of a full receive queue and counts none of it; the
    /// reader finds the drops, while the connection is up and exactly once it closed.
    #[tokio::test]
    async fn datagrams_quinn_dropped_before_the_reader_ran_are_counted() {
        // About three times what the 1 MiB receive queue holds.
        const SENT: u64 = 3000;
        let pair = crate::media::loopback::quic_pair().await.unwrap();
        let (b, _rx, metrics) = hub();
        for _ in 0..SENT {
            // No route for Quarter Stream 7: each datagram the reader gets is a `no_route` drop.
            pair.client_conn
                .send_datagram_wait(big_datagram(7))
                .await
                .unwrap();
        }
        // Wait until the receiving quinn has taken in all that will arrive (a burst this size
        // can overflow the kernel's socket buffer: those packets are lost, not counted).
        let mut accepted = 0;
        for _ in 0..100 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let now = pair.server_conn.stats().frame_rx.datagram;
            if now == accepted && now > 0 {
                break;
            }
            accepted = now;
        }
        assert!(
            accepted > 2000,
            "only {accepted} of {SENT} datagrams arrived"
        );
        let reader = tokio::spawn(b.clone().run_quic_reader(pair.server_conn.clone()));
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        // Read after the reader's first check is due, with the connection up.
        pair.client_conn.send_datagram(big_datagram(7)).unwrap();
        let mut live = 0;
        for _ in 0..200 {
            live = dropped(&metrics, DropReason::QuicRecvQueue);
            if live > 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let read = dropped(&metrics, DropReason::NoRoute);
        assert!(live > 0 && read < accepted, "read {read}, dropped {live}");
        assert_eq!(
            live + read,
            accepted + 1,
            "every datagram read or counted as dropped"
        );
        pair.client_conn.close(0u32.into(), b"done");
        reader.await.unwrap();
        assert_eq!(
            dropped(&metrics, DropReason::QuicRecvQueue) + dropped(&metrics, DropReason::NoRoute),
            accepted + 1,
            "nothing counted twice at the close"
        );
    }

    /// quinn makes room in a full send queue by dropping its oldest datagrams; the flush task
    /// counts each datagram that pushed one out.
    #[tokio::test]
    async fn datagrams_quinn_dropped_from_a_full_send_queue_are_counted() {
        // One batch of twice what the 1 MiB send queue holds.
        const SENT: u64 = 2000;
        let pair = crate::media::loopback::quic_pair().await.unwrap();
        let (a, _rx, metrics) = hub();
        let sender = a.sender(&pair.client_conn);
        let before = pair.client_conn.stats().frame_tx.datagram;
        for _ in 0..SENT {
            sender.send(big_datagram(7), false);
        }
        // The flush task hands the batch over, then quinn sends what it kept.
        let full = pair.client_conn.datagram_send_buffer_space();
        let mut sent = 0;
        for _ in 0..500 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            sent = pair.client_conn.stats().frame_tx.datagram - before;
            if metrics.quic_flushes.load(Ordering::Relaxed) > 0
                && pair.client_conn.datagram_send_buffer_space() == full
            {
                break;
            }
        }
        let counted = dropped(&metrics, DropReason::QuicSendQueue);
        assert!(sent < SENT, "quinn sent all {sent}: the queue never filled");
        assert_eq!(counted, SENT - sent, "{sent} of {SENT} sent");
        drop(sender);
    }

    /// A datagram for a call that has just closed counts as `closed`; one for a Quarter Stream
    /// ID no call had counts as `no_route`.
    #[tokio::test]
    async fn datagrams_for_a_call_that_just_closed_count_as_closed() {
        let pair = crate::media::loopback::quic_pair().await.unwrap();
        let (b, _rx, metrics) = hub();
        let call = CallKey(9);
        b.apply(MediaCmd::OpenLegacy { call, port: 0 });
        b.bind_quic(call, pair.server_conn.clone(), 8);
        tokio::spawn(b.clone().run_quic_reader(pair.server_conn.clone()));
        b.apply(MediaCmd::Close { call });
        let rtp = rtp::pcmu_packet(1, 0x5eed);
        let mut arena = DatagramArena::default();
        pair.client_conn
            .send_datagram(arena.frame(2, FLOW_RTP, &rtp).unwrap())
            .unwrap();
        pair.client_conn
            .send_datagram(arena.frame(3, FLOW_RTP, &rtp).unwrap())
            .unwrap();
        for _ in 0..200 {
            if dropped(&metrics, DropReason::Closed) + dropped(&metrics, DropReason::NoRoute) == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(
            dropped(&metrics, DropReason::Closed),
            1,
            "QSID 2, the closed call"
        );
        assert_eq!(
            dropped(&metrics, DropReason::NoRoute),
            1,
            "QSID 3, never a call"
        );
    }

    /// A congestion controller whose window the test sets.
    #[derive(Clone)]
    struct SetWindow(Arc<std::sync::atomic::AtomicU64>);

    impl quinn::congestion::Controller for SetWindow {
        fn on_congestion_event(&mut self, _: Instant, _: Instant, _: bool, _: u64) {}
        fn on_mtu_update(&mut self, _: u16) {}
        fn window(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
        fn clone_box(&self) -> Box<dyn quinn::congestion::Controller> {
            Box::new(self.clone())
        }
        fn initial_window(&self) -> u64 {
            self.window()
        }
        fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
            self
        }
    }

    impl quinn::congestion::ControllerFactory for SetWindow {
        fn build(self: Arc<Self>, _: Instant, _: u16) -> Box<dyn quinn::congestion::Controller> {
            Box::new((*self).clone())
        }
    }

    /// Forwards UDP between a client and `server` with `delay` each way, as a long path does.
    /// Returns the address the client sends to.
    async fn delaying_path(server: SocketAddr, delay: std::time::Duration) -> SocketAddr {
        let sock = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = sock.local_addr().unwrap();
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, SocketAddr, Vec<u8>)>();
        let out = sock.clone();
        tokio::spawn(async move {
            while let Some((at, to, d)) = rx.recv().await {
                tokio::time::sleep_until(at).await;
                let _ = out.send_to(&d, to).await;
            }
        });
        tokio::spawn(async move {
            let mut client = None;
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let to = if from == server {
                    match client {
                        Some(c) => c,
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    server
                };
                let _ = tx.send((tokio::time::Instant::now() + delay, to, buf[..n].to_vec()));
            }
        });
        addr
    }

    /// A path that carries about 40 % of the media (a congestion window of 6000 bytes over a
    /// 40 ms round trip; 1100-byte datagrams every 2–3 ms): no datagram arrives much later than
    /// the path's own delay plus the gate's limit, the path carries what it can (about 120 in
    /// the second), and the rest is dropped as stale. Without the gate the same run delivers
    /// datagrams 0.7 s late, and later the longer it runs. ADR 0019.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_quic_path_gets_fresh_media_or_none() {
        const ONE_WAY: std::time::Duration = std::time::Duration::from_millis(20);
        let window = Arc::new(std::sync::atomic::AtomicU64::new(1 << 24));
        let cc = Arc::new(SetWindow(window.clone()));
        let pair = crate::media::loopback::quic_pair_with(
            |t| {
                t.congestion_controller_factory(cc);
            },
            async |server| delaying_path(server, ONE_WAY).await,
        )
        .await
        .unwrap();
        window.store(6000, Ordering::Relaxed);
        let (a, _rx, metrics) = hub();
        let sender = a.sender(&pair.client_conn);
        let t0 = tokio::time::Instant::now();
        let far = pair.server_conn.clone();
        let reader = tokio::spawn(async move {
            let mut delays = Vec::new();
            while let Ok(d) = far.read_datagram().await {
                let made = u64::from_be_bytes(d[..8].try_into().unwrap());
                delays.push(t0.elapsed().as_micros() as u64 - made);
            }
            delays
        });
        let mut made = 0;
        while t0.elapsed() < std::time::Duration::from_secs(1) {
            // Each datagram carries the microsecond it was made.
            let mut d = vec![0u8; 1100];
            d[..8].copy_from_slice(&(t0.elapsed().as_micros() as u64).to_be_bytes());
            sender.send(bytes::Bytes::from(d), true);
            made += 1;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        tokio::time::sleep(ONE_WAY * 4).await;
        pair.server_conn.close(0u32.into(), b"done");
        let delays = reader.await.unwrap();

        let stale = dropped(&metrics, DropReason::QuicStale);
        let worst = delays.iter().max().copied().unwrap_or(0);
        // The path's one-way delay, a round trip waiting for the window to open, the gate's
        // 60 ms, and as much again for the rate estimate's lag.
        assert!(
            worst < 20_000 + 40_000 + 60_000 + 60_000,
            "a datagram arrived {worst} µs after it was made ({} delivered, {stale} stale, {made} made)",
            delays.len()
        );
        assert!(delays.len() >= 80, "the path carried only {}", delays.len());
        assert!(
            stale as usize >= made / 2,
            "{stale} of {made} dropped as stale, {} delivered",
            delays.len()
        );
        drop(sender);
    }

    #[test]
    fn open_outside_runtime_reports_instead_of_panicking() {
        let (hub, mut rx, _) = hub();
        hub.apply(MediaCmd::OpenLegacy {
            call: CallKey(3),
            port: 0,
        });
        assert!(matches!(
            rx.try_recv(),
            Ok(MediaEvent::BindFailed {
                call: CallKey(3),
                ..
            })
        ));
    }
}
