//! SIP transports: UDP, TCP and TLS listeners, and outgoing stream connections.
//!
//! Each socket or connection is a task that parses what arrives (off the engine's thread) and
//! hands [`Input::Sip`] to the engine. Sending is synchronous for the caller: UDP uses
//! `try_send_to`, streams queue to their connection's writer task.
//!
//! A message for a TCP or TLS address without an open connection opens one; for TLS, with the
//! client settings registered for that address ([`SipSender::set_tls_peers`], one per
//! `[[sip_trunk]]` reached over TLS). Connections we open carry requests both ways, like
//! accepted ones.

use super::msg::{self, Transport};
use super::txn::{ConnId, Dest, SipOut};
use crate::bridge::engine::{Input, SipInbound};
use crate::metrics::{Dir, Metrics};
use crate::tls::SipTlsClient;
use bytes::{Buf, Bytes, BytesMut};
use rsipstack::sip::SipMessage;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Queue depth per stream connection; a peer that does not read is disconnected.
const CONN_QUEUE: usize = 1024;
/// Outgoing SIP/TCP connects, and the TLS handshake after them, each give up after this (a
/// black-holed address must not hold tasks for the kernel's SYN timeout).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Sends SIP messages; cheap to clone.
#[derive(Clone)]
pub struct SipSender {
    inner: Arc<Inner>,
}

struct Inner {
    udp: Vec<Arc<UdpSocket>>,
    conns: Mutex<Conns>,
    next_conn: AtomicU64,
    engine: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    /// How to open SIP-TLS connections, by destination address.
    tls_peers: RwLock<HashMap<SocketAddr, SipTlsClient>>,
}

#[derive(Default)]
struct Conns {
    by_id: HashMap<ConnId, mpsc::Sender<Bytes>>,
    by_addr: HashMap<(SocketAddr, Transport), ConnId>,
}

fn lock(m: &Mutex<Conns>) -> std::sync::MutexGuard<'_, Conns> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The listeners this gateway should open.
pub struct Listeners {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
    pub tls_acceptor: Option<tokio_rustls::TlsAcceptor>,
}

/// Binds every listener (failing fast with the address in the error) and starts their tasks.
pub async fn start(
    l: Listeners,
    engine: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<SipSender> {
    let mut udp = Vec::new();
    for a in &l.udp {
        let s = UdpSocket::bind(a)
            .await
            .map_err(|e| anyhow::anyhow!("SIP UDP listener {a}: {e}"))?;
        udp.push(Arc::new(s));
    }
    let mut tcp = Vec::new();
    for a in &l.tcp {
        tcp.push(
            TcpListener::bind(a)
                .await
                .map_err(|e| anyhow::anyhow!("SIP TCP listener {a}: {e}"))?,
        );
    }
    let mut tls = Vec::new();
    for a in &l.tls {
        tls.push(
            TcpListener::bind(a)
                .await
                .map_err(|e| anyhow::anyhow!("SIP TLS listener {a}: {e}"))?,
        );
    }
    let sender = SipSender {
        inner: Arc::new(Inner {
            udp: udp.clone(),
            conns: Mutex::new(Conns::default()),
            next_conn: AtomicU64::new(1),
            engine,
            metrics,
            tls_peers: RwLock::new(HashMap::new()),
        }),
    };
    for (i, s) in udp.into_iter().enumerate() {
        tokio::spawn(udp_loop(s, ConnId(i as u64), sender.clone()));
    }
    for t in tcp {
        let s = sender.clone();
        tokio::spawn(async move {
            loop {
                match t.accept().await {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        s.spawn_conn(stream, peer, Transport::Tcp, None);
                    }
                    Err(e) => warn!(error = %e, "SIP TCP accept failed"),
                }
            }
        });
    }
    if let Some(acceptor) = l.tls_acceptor {
        for t in tls {
            let s = sender.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                loop {
                    match t.accept().await {
                        Ok((stream, peer)) => {
                            let s = s.clone();
                            let acceptor = acceptor.clone();
                            tokio::spawn(async move {
                                match acceptor.accept(stream).await {
                                    Ok(tls) => {
                                        // TLS-03: the engine checks the client certificate
                                        // against the trunk the request comes from.
                                        let cert = tls
                                            .get_ref()
                                            .1
                                            .peer_certificates()
                                            .and_then(|c| c.first())
                                            .map(|c| crate::tls::sha256(c.as_ref()));
                                        s.spawn_conn(tls, peer, Transport::Tls, cert);
                                    }
                                    Err(e) => debug!(%peer, error = %e, "SIP TLS handshake failed"),
                                }
                            });
                        }
                        Err(e) => warn!(error = %e, "SIP TLS accept failed"),
                    }
                }
            });
        }
    } else if !tls.is_empty() {
        anyhow::bail!("SIP TLS listeners configured without a certificate");
    }
    Ok(sender)
}

/// `id` names the socket: replies to what arrives here leave from the same socket.
async fn udp_loop(sock: Arc<UdpSocket>, id: ConnId, s: SipSender) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, src) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP port unreachable surfaces here on some systems; keep serving.
                debug!(error = %e, "SIP UDP receive error");
                continue;
            }
        };
        let data = &buf[..n];
        // RFC 5626 keep-alives over UDP are STUN; bare CRLFs are tolerated and ignored.
        if data.iter().all(|b| *b == b'\r' || *b == b'\n') {
            continue;
        }
        s.deliver(data, src, Transport::Udp, Some(id), None).await;
    }
}

impl SipSender {
    /// Parses one message and passes it to the engine, or answers/drops a malformed one.
    /// `peer_cert` is the SHA-256 of the TLS client certificate of the connection, if any.
    async fn deliver(
        &self,
        data: &[u8],
        src: SocketAddr,
        transport: Transport,
        conn: Option<ConnId>,
        peer_cert: Option<[u8; 32]>,
    ) {
        let m = &self.inner.metrics;
        match msg::parse(data) {
            Ok((msg, info)) => {
                let kind = match &msg {
                    SipMessage::Request(r) => r.method.to_string(),
                    SipMessage::Response(r) => r.status_code.code().to_string(),
                };
                m.sip_message(Dir::In, &kind);
                let input = Input::Sip(Box::new(SipInbound {
                    msg,
                    info,
                    src,
                    transport,
                    conn,
                    peer_cert_sha256: peer_cert,
                }));
                if self.inner.engine.send(input).await.is_err() {
                    warn!("engine stopped; SIP message dropped");
                }
            }
            Err(bad) => match bad.reply {
                Some(reply) => {
                    m.sip_bad_request();
                    debug!(%src, reason = %bad.reason, "malformed SIP request answered");
                    self.send(SipOut {
                        dest: Dest {
                            addr: src,
                            transport,
                            conn,
                        },
                        bytes: reply.into(),
                    });
                }
                None => {
                    m.sip_malformed(match transport {
                        Transport::Udp => "udp",
                        Transport::Tcp => "tcp",
                        Transport::Tls => "tls",
                    });
                    debug!(%src, reason = %bad.reason, "malformed SIP dropped");
                }
            },
        }
    }

    fn spawn_conn<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        transport: Transport,
        peer_cert: Option<[u8; 32]>,
    ) -> ConnId
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let id = ConnId(self.inner.next_conn.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(CONN_QUEUE);
        {
            let mut c = lock(&self.inner.conns);
            c.by_id.insert(id, tx);
            c.by_addr.insert((peer, transport), id);
        }
        let s = self.clone();
        tokio::spawn(async move {
            if let Err(e) = s
                .conn_loop(stream, rx, peer, transport, id, peer_cert)
                .await
            {
                debug!(%peer, error = %e, "SIP connection closed");
            }
            let mut c = lock(&s.inner.conns);
            c.by_id.remove(&id);
            if c.by_addr.get(&(peer, transport)) == Some(&id) {
                c.by_addr.remove(&(peer, transport));
            }
        });
        id
    }

    async fn conn_loop<S>(
        &self,
        stream: S,
        mut rx: mpsc::Receiver<Bytes>,
        peer: SocketAddr,
        transport: Transport,
        id: ConnId,
        peer_cert: Option<[u8; 32]>,
    ) -> anyhow::Result<()>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut buf = BytesMut::with_capacity(8192);
        // How far the buffer has been searched for the end of headers: a peer trickling a
        // large header byte by byte must not make every read rescan it from the start.
        let mut scanned = 0usize;
        loop {
            tokio::select! {
                out = rx.recv() => {
                    let Some(out) = out else { return Ok(()) };
                    wr.write_all(&out).await?;
                }
                n = rd.read_buf(&mut buf) => {
                    if n? == 0 {
                        return Ok(());
                    }
                    loop {
                        match frame(&mut buf, &mut scanned) {
                            Frame::Incomplete => break,
                            Frame::KeepAlive => {
                                // RFC 5626 §3.5.1: answer a CRLFCRLF ping with a CRLF pong.
                                wr.write_all(b"\r\n").await?;
                            }
                            Frame::Message(m) => {
                                self.deliver(&m, peer, transport, Some(id), peer_cert).await
                            }
                            Frame::TooLarge => {
                                self.inner.metrics.sip_malformed(match transport {
                                    Transport::Tls => "tls",
                                    _ => "tcp",
                                });
                                anyhow::bail!("message over {} bytes", msg::MAX_MESSAGE);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The client settings for opening SIP-TLS connections, by destination address; replaces
    /// any set before. Addresses not listed get no outgoing TLS connection.
    pub fn set_tls_peers(&self, peers: HashMap<SocketAddr, SipTlsClient>) {
        *self
            .inner
            .tls_peers
            .write()
            .unwrap_or_else(|p| p.into_inner()) = peers;
    }

    /// Adds (or replaces) TLS settings by address, keeping the others: a call under way may
    /// still need an address a trunk's name no longer has.
    pub fn add_tls_peers(&self, peers: HashMap<SocketAddr, SipTlsClient>) {
        self.inner
            .tls_peers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(peers);
    }

    pub(crate) fn tls_peer(&self, addr: SocketAddr) -> Option<SipTlsClient> {
        self.inner
            .tls_peers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .cloned()
    }

    /// Tells the engine that messages to `addr` over `transport` could not be sent (a transport
    /// error, RFC 3263 §4.3): a pending INVITE there need not wait for Timer B. Best effort: with
    /// the engine's queue full, the timers still end what the messages belonged to.
    fn unreachable(&self, addr: SocketAddr, transport: Transport) {
        let _ = self
            .inner
            .engine
            .try_send(Input::Unreachable { addr, transport });
    }

    /// Opens a TCP connection to the destination (and with `tls`, runs the TLS client
    /// handshake on it) and queues the message on it. The connection is registered before the
    /// connect completes, so messages sent meanwhile queue behind this one in order instead of
    /// each opening a connection of its own. When the connection cannot be made, the reason is
    /// logged, the queued messages are dropped and the engine is told ([`Input::Unreachable`]);
    /// the transaction layer's timers (B, F) end what else they belonged to.
    fn connect_and_send(&self, out: SipOut, tls: Option<SipTlsClient>) {
        let transport = if tls.is_some() {
            Transport::Tls
        } else {
            Transport::Tcp
        };
        let id = ConnId(self.inner.next_conn.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(CONN_QUEUE);
        let key = (out.dest.addr, transport);
        {
            let mut c = lock(&self.inner.conns);
            c.by_id.insert(id, tx.clone());
            c.by_addr.insert(key, id);
        }
        let _ = tx.try_send(out.bytes);
        let s = self.clone();
        tokio::spawn(async move {
            let addr = key.0;
            let res = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await;
            let ended = match (res, tls) {
                (Ok(Ok(stream)), None) => {
                    let _ = stream.set_nodelay(true);
                    s.conn_loop(stream, rx, addr, Transport::Tcp, id, None)
                        .await
                }
                (Ok(Ok(stream)), Some(tls)) => {
                    let _ = stream.set_nodelay(true);
                    let name = tls.server_name.to_str().into_owned();
                    let hs = tls.connector.connect(tls.server_name, stream);
                    match tokio::time::timeout(CONNECT_TIMEOUT, hs).await {
                        Ok(Ok(stream)) => {
                            debug!(dest = %addr, server_name = %name, "SIP TLS connection open");
                            s.conn_loop(stream, rx, addr, Transport::Tls, id, None)
                                .await
                        }
                        Ok(Err(e)) => {
                            warn!(dest = %addr, server_name = %name, error = %e, "SIP TLS handshake failed; queued messages dropped");
                            s.unreachable(addr, transport);
                            Ok(())
                        }
                        Err(_) => {
                            warn!(dest = %addr, server_name = %name, "SIP TLS handshake timed out; queued messages dropped");
                            s.unreachable(addr, transport);
                            Ok(())
                        }
                    }
                }
                (Ok(Err(e)), _) => {
                    warn!(dest = %addr, error = %e, "SIP {} connect failed", transport.via_name());
                    s.unreachable(addr, transport);
                    Ok(())
                }
                (Err(_), _) => {
                    warn!(dest = %addr, "SIP {} connect timed out", transport.via_name());
                    s.unreachable(addr, transport);
                    Ok(())
                }
            };
            if let Err(e) = ended {
                debug!(%addr, error = %e, "SIP connection closed");
            }
            let mut c = lock(&s.inner.conns);
            c.by_id.remove(&id);
            if c.by_addr.get(&key) == Some(&id) {
                c.by_addr.remove(&key);
            }
        });
    }

    /// Sends a message; never blocks. Failures are logged and counted: the transaction layer
    /// retransmits over UDP, and stream peers reconnect.
    pub fn send(&self, out: SipOut) {
        let kind = kind_of(&out.bytes);
        self.inner.metrics.sip_message(Dir::Out, &kind);
        match out.dest.transport {
            Transport::Udp => {
                // The socket the request came in on when known, so that strict peers and NATs
                // see the reply from the address they sent to; else one of the right family.
                let by_id = out
                    .dest
                    .conn
                    .and_then(|ConnId(i)| self.inner.udp.get(i as usize));
                let Some(sock) = by_id
                    .or_else(|| {
                        self.inner.udp.iter().find(|s| {
                            s.local_addr()
                                .map(|a| a.is_ipv4() == out.dest.addr.is_ipv4())
                                .unwrap_or(false)
                        })
                    })
                    .or(self.inner.udp.first())
                else {
                    warn!("no UDP socket to send SIP from");
                    return;
                };
                match sock.try_send_to(&out.bytes, out.dest.addr) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        let sock = sock.clone();
                        tokio::spawn(async move {
                            let _ = sock.send_to(&out.bytes, out.dest.addr).await;
                        });
                    }
                    Err(e) => debug!(dest = %out.dest.addr, error = %e, "SIP UDP send failed"),
                }
            }
            Transport::Tcp | Transport::Tls => {
                let tx = {
                    let c = lock(&self.inner.conns);
                    out.dest
                        .conn
                        .and_then(|id| c.by_id.get(&id).cloned())
                        .or_else(|| {
                            c.by_addr
                                .get(&(out.dest.addr, out.dest.transport))
                                .and_then(|id| c.by_id.get(id).cloned())
                        })
                };
                match tx {
                    Some(tx) => {
                        if tx.try_send(out.bytes).is_err() {
                            warn!(dest = %out.dest.addr, "SIP connection queue full; message dropped");
                        }
                    }
                    None if out.dest.transport == Transport::Tcp => {
                        self.connect_and_send(out, None)
                    }
                    None => match self.tls_peer(out.dest.addr) {
                        Some(tls) => self.connect_and_send(out, Some(tls)),
                        None => {
                            warn!(dest = %out.dest.addr, "no SIP TLS connection to this address and no [[sip_trunk]] reached over TLS there; message dropped");
                            self.unreachable(out.dest.addr, Transport::Tls);
                        }
                    },
                }
            }
        }
    }
}

fn kind_of(b: &[u8]) -> String {
    let line = b.split(|c| *c == b' ').take(2).collect::<Vec<_>>();
    match line.as_slice() {
        [first, second] if first.starts_with(b"SIP/") => {
            String::from_utf8_lossy(second).into_owned()
        }
        [first, ..] => String::from_utf8_lossy(first).into_owned(),
        _ => "other".into(),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Frame {
    Incomplete,
    KeepAlive,
    Message(Bytes),
    TooLarge,
}

/// Frames one message from a stream by its Content-Length (RFC 3261 §18.3), or a keep-alive.
fn frame(buf: &mut BytesMut, scanned: &mut usize) -> Frame {
    // Leading CRLFs: a double CRLF is a keep-alive ping; a lone one is padding.
    if buf.starts_with(b"\r\n\r\n") {
        buf.advance(4);
        *scanned = 0;
        return Frame::KeepAlive;
    }
    while buf.starts_with(b"\r\n") && buf.len() >= 4 {
        buf.advance(2);
        *scanned = 0;
    }
    if buf.starts_with(b"\r\n") {
        return Frame::Incomplete;
    }
    let from = scanned.saturating_sub(3).min(buf.len());
    let Some(end) = find(&buf[from..], b"\r\n\r\n").map(|i| i + from) else {
        *scanned = buf.len();
        return if buf.len() > msg::MAX_MESSAGE {
            Frame::TooLarge
        } else {
            Frame::Incomplete
        };
    };
    let head = &buf[..end];
    let mut cl = 0usize;
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            let name = String::from_utf8_lossy(&line[..colon]);
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
                cl = String::from_utf8_lossy(&line[colon + 1..])
                    .trim()
                    .parse()
                    .unwrap_or(usize::MAX);
            }
        }
    }
    if cl > msg::MAX_MESSAGE {
        return Frame::TooLarge;
    }
    let total = end + 4 + cl;
    if buf.len() < total {
        return Frame::Incomplete;
    }
    *scanned = 0;
    Frame::Message(buf.split_to(total).freeze())
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transport with only UDP listeners, delivering to `tx`.
    async fn udp_only(udp: Vec<SocketAddr>, tx: mpsc::Sender<Input>) -> SipSender {
        let l = Listeners {
            udp,
            tcp: vec![],
            tls: vec![],
            tls_acceptor: None,
        };
        start(l, tx, Arc::new(Metrics::default())).await.unwrap()
    }

    #[test]
    fn frames_by_content_length_across_chunks() {
        let m1 = b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 3\r\n\r\nabc";
        let m2 = b"BYE sip:a SIP/2.0\r\nl: 0\r\n\r\n";
        let mut all = Vec::new();
        all.extend_from_slice(b"\r\n\r\n");
        all.extend_from_slice(m1);
        all.extend_from_slice(m2);
        for split in 0..all.len() {
            let mut buf = BytesMut::new();
            let mut scanned = 0;
            let mut got = Vec::new();
            for chunk in [&all[..split], &all[split..]] {
                buf.extend_from_slice(chunk);
                loop {
                    match frame(&mut buf, &mut scanned) {
                        Frame::Incomplete => break,
                        f => got.push(f),
                    }
                }
            }
            assert_eq!(
                got,
                vec![
                    Frame::KeepAlive,
                    Frame::Message(Bytes::from_static(m1)),
                    Frame::Message(Bytes::from_static(m2))
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn oversized_content_length_is_refused() {
        let mut buf =
            BytesMut::from(&b"INVITE sip:a SIP/2.0\r\nContent-Length: 99999999\r\n\r\n"[..]);
        assert_eq!(frame(&mut buf, &mut 0), Frame::TooLarge);
    }

    #[test]
    fn byte_by_byte_arrival_frames_the_same() {
        let m = b"OPTIONS sip:a SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: 2\r\n\r\nok";
        let mut buf = BytesMut::new();
        let mut scanned = 0;
        let mut got = Vec::new();
        for b in m.iter().chain(m.iter()) {
            buf.extend_from_slice(&[*b]);
            loop {
                match frame(&mut buf, &mut scanned) {
                    Frame::Incomplete => break,
                    f => got.push(f),
                }
            }
        }
        let one = || Frame::Message(Bytes::from_static(m));
        assert_eq!(got, vec![one(), one()]);
    }

    #[tokio::test]
    async fn outgoing_tcp_messages_share_one_connection_in_order() {
        let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = peer.local_addr().unwrap();
        let (tx, _rx) = mpsc::channel(16);
        let sender = udp_only(vec!["127.0.0.1:0".parse().unwrap()], tx).await;
        let dest = Dest {
            addr,
            transport: Transport::Tcp,
            conn: None,
        };
        // Sent back to back, before the first connect can have completed.
        for m in [
            "ACK sip:a SIP/2.0\r\nl: 0\r\n\r\n",
            "BYE sip:a SIP/2.0\r\nl: 0\r\n\r\n",
        ] {
            sender.send(SipOut {
                dest,
                bytes: Bytes::from_static(m.as_bytes()),
            });
        }
        let (mut conn, _) = peer.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.len() < 2 * 25 {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("ACK") && text.contains("BYE"),
            "in order on one connection: {text:?}"
        );
        let second =
            tokio::time::timeout(std::time::Duration::from_millis(200), peer.accept()).await;
        assert!(second.is_err(), "no second connection was opened");
    }

    #[tokio::test]
    async fn a_refused_connect_or_an_address_without_tls_settings_is_reported_to_the_engine() {
        // A port nobody listens on: bound, then closed.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let sender = udp_only(vec!["127.0.0.1:0".parse().unwrap()], tx).await;
        let invite = Bytes::from_static(b"INVITE sip:a SIP/2.0\r\nl: 0\r\n\r\n");
        for transport in [Transport::Tcp, Transport::Tls] {
            sender.send(SipOut {
                dest: Dest {
                    addr: closed,
                    transport,
                    conn: None,
                },
                bytes: invite.clone(),
            });
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("reported within the connect timeout");
            match got {
                Some(Input::Unreachable { addr, transport: t }) => {
                    assert_eq!((addr, t), (closed, transport))
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn udp_replies_leave_from_the_socket_the_request_came_in_on() {
        let (tx, mut rx) = mpsc::channel(16);
        let a = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let sender = udp_only(vec![a, b], tx).await;
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let opt = "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK1;rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        peer.send_to(opt.as_bytes(), b).await.unwrap();
        let Some(Input::Sip(m)) = rx.recv().await else {
            panic!("the OPTIONS reaches the engine")
        };
        sender.send(SipOut {
            dest: Dest {
                addr: m.src,
                transport: Transport::Udp,
                conn: m.conn,
            },
            bytes: Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"),
        });
        let mut buf = [0u8; 64];
        let (_, from) = peer.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            from, b,
            "the reply comes from the second listener, where the request went"
        );
    }

    /// A SIP-TLS peer on 127.0.0.1 with a self-signed certificate for `sip:peer.example`, and
    /// the client settings of a trunk `sip:peer.example;transport=tls` trusting it.
    async fn tls_peer(tag: &str) -> (TcpListener, tokio_rustls::TlsAcceptor, SipTlsClient) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![rcgen::SanType::URI("sip:peer.example".try_into().unwrap())];
        let cert = p.self_signed(&key).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "riptide-transport-{tag}-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        let text = "[[sip_trunk]]\nname = \"t\"\ntarget = \"sip:peer.example;transport=tls\"\ntls_ca = \"ca.pem\"\n";
        let mut cfg = crate::config::load_str(text, "t.toml").unwrap();
        cfg.base_dir = dir.clone();
        let client = crate::tls::sip_trunk_tls(&cfg, &cfg.sip_trunks[0]).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        (l, tokio_rustls::TlsAcceptor::from(Arc::new(server)), client)
    }

    /// Reads from `s` until `want` bytes arrived.
    async fn read_at_least<S: AsyncRead + Unpin>(s: &mut S, want: usize) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while got.len() < want {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed after {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    /// A message for a TLS address a trunk is reached at opens a TLS connection (verified,
    /// with SNI); messages sent meanwhile follow in order on it; a request the peer sends on
    /// it reaches the engine as TLS from that connection, and the reply goes back on it.
    #[tokio::test]
    async fn outgoing_tls_connects_and_carries_requests_both_ways() {
        let (peer, acceptor, client) = tls_peer("out").await;
        let addr = peer.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let sender = udp_only(vec!["127.0.0.1:0".parse().unwrap()], tx).await;
        let dest = Dest {
            addr,
            transport: Transport::Tls,
            conn: None,
        };
        let ack = "ACK sip:a SIP/2.0\r\nl: 0\r\n\r\n";
        let bye = "BYE sip:a SIP/2.0\r\nl: 0\r\n\r\n";
        // Not registered yet: nothing is opened.
        sender.send(SipOut {
            dest,
            bytes: Bytes::from_static(ack.as_bytes()),
        });
        let none = tokio::time::timeout(std::time::Duration::from_millis(200), peer.accept()).await;
        assert!(
            none.is_err(),
            "no connection without TLS settings for the address"
        );
        assert!(
            matches!(rx.try_recv(), Ok(Input::Unreachable { addr: a, transport: Transport::Tls }) if a == addr),
            "and the engine is told the message could not go"
        );

        sender.set_tls_peers(HashMap::from([(addr, client)]));
        for m in [ack, bye] {
            sender.send(SipOut {
                dest,
                bytes: Bytes::from_static(m.as_bytes()),
            });
        }
        let (tcp, _) = peer.accept().await.unwrap();
        let mut conn = acceptor.accept(tcp).await.unwrap();
        assert_eq!(conn.get_ref().1.server_name(), Some("peer.example"));
        let text = read_at_least(&mut conn, ack.len() + bye.len()).await;
        assert_eq!(
            text,
            format!("{ack}{bye}"),
            "both, in order, on one connection"
        );

        let opt = "OPTIONS sip:riptide@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        conn.write_all(opt.as_bytes()).await.unwrap();
        let Some(Input::Sip(m)) = rx.recv().await else {
            panic!("the OPTIONS reaches the engine")
        };
        assert_eq!((m.src, m.transport), (addr, Transport::Tls));
        assert!(m.conn.is_some());
        let ok = "SIP/2.0 200 OK\r\nl: 0\r\n\r\n";
        sender.send(SipOut {
            dest: Dest {
                addr: m.src,
                transport: m.transport,
                conn: m.conn,
            },
            bytes: Bytes::from_static(ok.as_bytes()),
        });
        assert_eq!(read_at_least(&mut conn, ok.len()).await, ok);
        let second =
            tokio::time::timeout(std::time::Duration::from_millis(200), peer.accept()).await;
        assert!(second.is_err(), "no second connection was opened");
    }

    /// A refused handshake drops what was queued; the next message tries a new connection.
    #[tokio::test]
    async fn failed_tls_handshake_drops_the_message_and_a_later_one_reconnects() {
        let (peer, _acceptor, client) = tls_peer("fail").await;
        let addr = peer.local_addr().unwrap();
        // The peer presents a certificate the trunk's settings do not trust.
        let (_, wrong, _) = tls_peer("other").await;
        let (tx, _rx) = mpsc::channel(16);
        let sender = udp_only(vec!["127.0.0.1:0".parse().unwrap()], tx).await;
        sender.set_tls_peers(HashMap::from([(addr, client)]));
        let dest = Dest {
            addr,
            transport: Transport::Tls,
            conn: None,
        };
        for _ in 0..2 {
            sender.send(SipOut {
                dest,
                bytes: Bytes::from_static(b"OPTIONS sip:a SIP/2.0\r\nl: 0\r\n\r\n"),
            });
            let (tcp, _) = tokio::time::timeout(std::time::Duration::from_secs(5), peer.accept())
                .await
                .expect("a connection attempt")
                .unwrap();
            // The client refuses the certificate with an alert before its Finished, so the
            // handshake never completes and nothing is sent.
            let err = wrong
                .accept(tcp)
                .await
                .expect_err("the client refuses the certificate");
            assert!(err.to_string().contains("alert"), "{err}");
            // Let the sender forget the failed connection.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    #[test]
    fn kind_of_messages() {
        assert_eq!(kind_of(b"SIP/2.0 180 Ringing\r\n"), "180");
        assert_eq!(kind_of(b"INVITE sip:x SIP/2.0\r\n"), "INVITE");
    }
}
