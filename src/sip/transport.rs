//! SIP transports: UDP, TCP and TLS listeners, and outgoing stream connections.
//!
//! Each socket or connection is a task that parses what arrives (off the engine's thread) and
//! hands [`Input::Sip`] to the engine. Sending is synchronous for the caller: UDP uses
//! `try_send_to`, streams queue to their connection's writer task.

use super::msg::{self, Transport};
use super::txn::{ConnId, Dest, SipOut};
use crate::bridge::engine::{Input, SipInbound};
use crate::metrics::{Dir, Metrics};
use bytes::{Buf, Bytes, BytesMut};
use rsipstack::sip::SipMessage;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// Queue depth per stream connection; a peer that does not read is disconnected.
const CONN_QUEUE: usize = 1024;
/// Outgoing SIP/TCP connects give up after this (a black-holed address must not hold tasks
/// for the kernel's SYN timeout).
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

    /// Opens a TCP connection to the destination and queues the message on it. The connection
    /// is registered before the connect completes, so messages sent meanwhile queue behind this
    /// one in order instead of each opening a connection of its own.
    fn connect_and_send(&self, out: SipOut) {
        let id = ConnId(self.inner.next_conn.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(CONN_QUEUE);
        let key = (out.dest.addr, Transport::Tcp);
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
            match res {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    if let Err(e) = s
                        .conn_loop(stream, rx, addr, Transport::Tcp, id, None)
                        .await
                    {
                        debug!(%addr, error = %e, "SIP connection closed");
                    }
                }
                Ok(Err(e)) => warn!(dest = %addr, error = %e, "SIP TCP connect failed"),
                Err(_) => warn!(dest = %addr, "SIP TCP connect timed out"),
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
                    None if out.dest.transport == Transport::Tcp => self.connect_and_send(out),
                    None => {
                        warn!(dest = %out.dest.addr, "no SIP TLS connection to this peer; outgoing TLS is not supported yet");
                    }
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

    #[test]
    fn kind_of_messages() {
        assert_eq!(kind_of(b"SIP/2.0 180 Ringing\r\n"), "180");
        assert_eq!(kind_of(b"INVITE sip:x SIP/2.0\r\n"), "INVITE");
    }
}
