//! Secure media on the legacy leg, through the whole gateway on loopback: a SIP caller that
//! speaks SDES-SRTP or DTLS-SRTP (and ICE) calls the built-in echo service, which crosses the
//! gateway's own HTTP/3 server. What the caller receives must be SRTP it can decrypt; tampered
//! and replayed packets are dropped and counted; a DTLS fingerprint mismatch ends the call.

use riptide::config::{self, Config, IceMode, MediaSecurity};
use riptide::media::dtls::{DtlsEndpoint, DtlsIdentity, DtlsRole, DtlsState, Fingerprint};
use riptide::media::ice::{is_stun, IceAgent, IceCredentials};
use riptide::media::srtp::{CryptoAttr, SrtpSession, Suite};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::time::timeout;

fn test_config(sip_port: u16, h3_port: u16, media: u16, tag: &str) -> Config {
    let mut cfg = config::embedded_default();
    let dir = std::env::temp_dir().join(format!("riptide-legacy-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    cfg.general.data_dir = dir;
    let sip: SocketAddr = ([127, 0, 0, 1], sip_port).into();
    cfg.sip.udp = vec![sip];
    cfg.sip.tcp = vec![];
    cfg.http3.listen = ([127, 0, 0, 1], h3_port).into();
    cfg.admin.listen = None;
    cfg.media.port_min = media;
    cfg.media.port_max = media + 99;
    cfg
}

fn invite(sip: SocketAddr, me: SocketAddr, call_id: &str, sdp: &str) -> String {
    format!(
        "INVITE sip:echo@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:+12155551212@{me}>;tag=t{call_id}\r\nTo: <sip:echo@{sip}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:test@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

fn sdp(rtp: SocketAddr, proto: &str, attrs: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} {proto} 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\na=rtcp-mux\r\n{attrs}",
        rtp.port()
    )
}

fn ack(sip: SocketAddr, me: SocketAddr, call_id: &str, to_tag: &str) -> String {
    format!(
        "ACK sip:riptide@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKack{call_id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:+12155551212@{me}>;tag=t{call_id}\r\nTo: <sip:echo@{sip}>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
}

async fn until(sock: &UdpSocket, prefixes: &[&str]) -> String {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, _) = timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
            .await
            .expect("a SIP message within 10 s")
            .expect("recv");
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if prefixes.iter().any(|p| m.starts_with(p)) {
            return m;
        }
    }
}

fn to_tag(m: &str) -> String {
    m.lines()
        .find(|l| l.starts_with("To:"))
        .and_then(|t| t.split("tag=").nth(1))
        .expect("to-tag")
        .to_string()
}

fn media_port(m: &str) -> u16 {
    m.lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("m=audio port")
}

fn attr<'a>(m: &'a str, name: &str) -> Option<&'a str> {
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("a={name}:")))
}

fn rtp(seq: u16) -> Vec<u8> {
    riptide::media::rtp::pcmu_packet(seq, 0x1234_5678)
}

fn dropped(running: &riptide::gateway::Running, reason: &str) -> u64 {
    let want = format!("riptide_media_packets_dropped_total{{reason=\"{reason}\"}} ");
    running
        .metrics
        .render()
        .lines()
        .find_map(|l| {
            l.strip_prefix(want.as_str())
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Sends `pkt` and waits up to 300 ms for one datagram back.
async fn round_trip(media: &UdpSocket, to: SocketAddr, pkt: &[u8]) -> Option<Vec<u8>> {
    media.send_to(pkt, to).await.unwrap();
    let mut buf = [0u8; 2048];
    match timeout(Duration::from_millis(300), media.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdes_call_echoes_srtp_and_drops_tampered_and_replayed_packets() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = test_config(15360, 15543, 32000, "sdes");
    cfg.media.security = MediaSecurity::Sdes;
    let running = riptide::gateway::start(cfg).await.expect("gateway starts");
    let sip: SocketAddr = "127.0.0.1:15360".parse().unwrap();
    let ua = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = ua.local_addr().unwrap();

    // A plain offer is refused by the sdes policy, with the reason.
    let plain = sdp(media.local_addr().unwrap(), "RTP/AVP", "");
    ua.send_to(invite(sip, me, "plain1", &plain).as_bytes(), sip)
        .await
        .unwrap();
    let refused = until(&ua, &["SIP/2.0 488"]).await;
    assert!(refused.contains("Warning: 399"), "{refused}");
    assert!(refused.contains("requires SRTP"), "{refused}");

    let ours = CryptoAttr::random(1, Suite::AesCm128HmacSha1_80).unwrap();
    let offer = sdp(
        media.local_addr().unwrap(),
        "RTP/SAVP",
        &format!("a=crypto:{}\r\n", ours.to_attr_value()),
    );
    ua.send_to(invite(sip, me, "sdes1", &offer).as_bytes(), sip)
        .await
        .unwrap();
    let ok = until(&ua, &["SIP/2.0 200"]).await;
    assert!(ok.contains("RTP/SAVP 0"), "{ok}");
    let theirs = CryptoAttr::parse(attr(&ok, "crypto").expect("a=crypto in the answer")).unwrap();
    assert_eq!((theirs.tag, theirs.suite), (1, Suite::AesCm128HmacSha1_80));
    assert_ne!(theirs.key_salt, ours.key_salt);
    ua.send_to(ack(sip, me, "sdes1", &to_tag(&ok)).as_bytes(), sip)
        .await
        .unwrap();
    let gw: SocketAddr = ([127, 0, 0, 1], media_port(&ok)).into();
    let mut session = SrtpSession::new(&ours, &theirs).unwrap();

    let mut echoed = 0;
    for seq in 0..40u16 {
        let plain = rtp(seq);
        let protected = session.protect_rtp(&plain).unwrap();
        if let Some(back) = round_trip(&media, gw, &protected).await {
            assert_eq!(back.len(), 182, "SRTP with an 80-bit tag, never plain RTP");
            assert_eq!(session.unprotect_rtp(&back).unwrap().as_ref(), &plain[..]);
            echoed += 1;
        }
    }
    assert!(echoed >= 30, "echoed {echoed} of 40");

    // Tampered: one payload bit flipped. Replayed: a packet already delivered.
    let srtp_before = dropped(&running, "srtp_auth");
    let mut tampered = session.protect_rtp(&rtp(100)).unwrap().to_vec();
    tampered[40] ^= 1;
    assert!(round_trip(&media, gw, &tampered).await.is_none());
    let replay = session.protect_rtp(&rtp(101)).unwrap().to_vec();
    assert!(round_trip(&media, gw, &replay).await.is_some());
    assert!(round_trip(&media, gw, &replay).await.is_none());
    assert_eq!(dropped(&running, "srtp_auth"), srtp_before + 2);
    // Plain RTP on a secured leg is not relayed either.
    assert!(round_trip(&media, gw, &rtp(102)).await.is_none());
    // ... and the call goes on.
    let next = session.protect_rtp(&rtp(103)).unwrap();
    assert!(round_trip(&media, gw, &next).await.is_some());
}

/// Pumps a DTLS endpoint over `media` until it is no longer handshaking or `deadline` passes.
async fn dtls_pump(
    d: &mut DtlsEndpoint,
    media: &UdpSocket,
    gw: &mut Option<SocketAddr>,
    deadline: Instant,
) {
    let mut buf = [0u8; 4096];
    while *d.state() == DtlsState::Handshaking && Instant::now() < deadline {
        while let Some(p) = d.poll_transmit() {
            if let Some(to) = *gw {
                media.send_to(&p, to).await.unwrap();
            }
        }
        let wait = d
            .poll_timeout()
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        match timeout(wait, media.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => {
                *gw = Some(from);
                if riptide::media::dtls::is_dtls(&buf[..n]) {
                    let _ = d.handle_packet(Instant::now(), &buf[..n]);
                }
            }
            _ => d.handle_timeout(Instant::now()),
        }
    }
    while let Some(p) = d.poll_transmit() {
        if let Some(to) = *gw {
            media.send_to(&p, to).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtls_call_is_keyed_by_the_handshake_and_a_fingerprint_mismatch_ends_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = test_config(15361, 15544, 32200, "dtls");
    cfg.media.security = MediaSecurity::Dtls;
    let _running = riptide::gateway::start(cfg).await.expect("gateway starts");
    let sip: SocketAddr = "127.0.0.1:15361".parse().unwrap();
    let ua = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = ua.local_addr().unwrap();
    let identity = DtlsIdentity::generate().unwrap();

    // Matching fingerprint: we offer actpass, the gateway answers active and is the client.
    let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let offer = sdp(
        media.local_addr().unwrap(),
        "UDP/TLS/RTP/SAVPF",
        &format!(
            "a=setup:actpass\r\na=fingerprint:{}\r\n",
            identity.fingerprint()
        ),
    );
    ua.send_to(invite(sip, me, "dtls1", &offer).as_bytes(), sip)
        .await
        .unwrap();
    let ok = until(&ua, &["SIP/2.0 200"]).await;
    assert!(ok.contains("UDP/TLS/RTP/SAVPF 0"), "{ok}");
    assert_eq!(attr(&ok, "setup"), Some("active"), "{ok}");
    let gw_fp = Fingerprint::parse(attr(&ok, "fingerprint").expect("fingerprint")).unwrap();
    ua.send_to(ack(sip, me, "dtls1", &to_tag(&ok)).as_bytes(), sip)
        .await
        .unwrap();
    let mut gw = Some(SocketAddr::from(([127, 0, 0, 1], media_port(&ok))));
    let mut d =
        DtlsEndpoint::new(&identity, DtlsRole::Server, gw_fp.clone(), Instant::now()).unwrap();
    dtls_pump(
        &mut d,
        &media,
        &mut gw,
        Instant::now() + Duration::from_secs(8),
    )
    .await;
    assert_eq!(*d.state(), DtlsState::Connected);
    let mut session = d.take_srtp().expect("SRTP keys from the handshake");
    let gw = gw.unwrap();
    let mut echoed = 0;
    for seq in 0..20u16 {
        let plain = rtp(seq);
        let protected = session.protect_rtp(&plain).unwrap();
        if let Some(back) = round_trip(&media, gw, &protected).await {
            if riptide::media::dtls::is_dtls(&back) {
                continue;
            }
            assert_eq!(session.unprotect_rtp(&back).unwrap().as_ref(), &plain[..]);
            echoed += 1;
        }
    }
    assert!(echoed >= 15, "echoed {echoed} of 20");

    // Mismatch: the SDP names another certificate than the one the caller presents.
    let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let other = DtlsIdentity::generate().unwrap();
    let offer = sdp(
        media.local_addr().unwrap(),
        "UDP/TLS/RTP/SAVPF",
        &format!(
            "a=setup:actpass\r\na=fingerprint:{}\r\n",
            other.fingerprint()
        ),
    );
    ua.send_to(invite(sip, me, "dtls2", &offer).as_bytes(), sip)
        .await
        .unwrap();
    let ok = until(&ua, &["SIP/2.0 200", "SIP/2.0 488"]).await;
    let mut gw = Some(SocketAddr::from(([127, 0, 0, 1], media_port(&ok))));
    if ok.starts_with("SIP/2.0 200") {
        ua.send_to(ack(sip, me, "dtls2", &to_tag(&ok)).as_bytes(), sip)
            .await
            .unwrap();
    }
    let gw_fp = Fingerprint::parse(attr(&ok, "fingerprint").expect("fingerprint")).unwrap();
    let mut d = DtlsEndpoint::new(&identity, DtlsRole::Server, gw_fp, Instant::now()).unwrap();
    dtls_pump(
        &mut d,
        &media,
        &mut gw,
        Instant::now() + Duration::from_secs(5),
    )
    .await;
    assert_ne!(
        *d.state(),
        DtlsState::Connected,
        "the gateway must not complete the handshake"
    );
    if ok.starts_with("SIP/2.0 200") {
        let bye = until(&ua, &["BYE "]).await;
        assert!(bye.contains("Call-ID: dtls2"), "{bye}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_lite_sends_no_media_before_a_check_and_answers_checks() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = test_config(15362, 15545, 32400, "ice");
    cfg.media.security = MediaSecurity::Rtp;
    cfg.media.ice = IceMode::Lite;
    let _running = riptide::gateway::start(cfg).await.expect("gateway starts");
    let sip: SocketAddr = "127.0.0.1:15362".parse().unwrap();
    let ua = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = ua.local_addr().unwrap();
    let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = media.local_addr().unwrap();
    let creds = IceCredentials::generate();
    let offer = sdp(
        local,
        "RTP/AVP",
        &format!(
            "a=ice-ufrag:{}\r\na=ice-pwd:{}\r\na=candidate:1 1 UDP 2130706431 {} {} typ host\r\n",
            creds.ufrag,
            creds.pwd,
            local.ip(),
            local.port()
        ),
    );
    ua.send_to(invite(sip, me, "ice1", &offer).as_bytes(), sip)
        .await
        .unwrap();
    let ok = until(&ua, &["SIP/2.0 200"]).await;
    assert!(ok.contains("a=ice-lite"), "{ok}");
    ua.send_to(ack(sip, me, "ice1", &to_tag(&ok)).as_bytes(), sip)
        .await
        .unwrap();
    let gw: SocketAddr = ([127, 0, 0, 1], media_port(&ok)).into();
    let remote = IceCredentials {
        ufrag: attr(&ok, "ice-ufrag").unwrap().to_string(),
        pwd: attr(&ok, "ice-pwd").unwrap().to_string(),
    };
    // Before any check: our RTP is relayed to the echo, but nothing may come back to us.
    for seq in 0..5u16 {
        let back = round_trip(&media, gw, &rtp(seq)).await;
        assert!(
            back.is_none(),
            "media sent to an unchecked address: {back:?}"
        );
    }
    // A full controlling agent checks the gateway's candidate and nominates it.
    let mut agent = IceAgent::new(
        riptide::media::ice::IceMode::Full { controlling: true },
        creds,
        remote,
        vec![gw],
        Instant::now(),
    );
    let mut buf = [0u8; 2048];
    let mut first_media_after_stun = false;
    let mut saw_stun = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seq = 10u16;
    while Instant::now() < deadline && !first_media_after_stun {
        agent.handle_timeout(Instant::now());
        while let Some((to, p)) = agent.poll_transmit() {
            media.send_to(&p, to).await.unwrap();
        }
        if agent.send_addr(Instant::now()).is_some() {
            media.send_to(&rtp(seq), gw).await.unwrap();
            seq += 1;
        }
        if let Ok(Ok((n, from))) =
            timeout(Duration::from_millis(50), media.recv_from(&mut buf)).await
        {
            if is_stun(&buf[..n]) {
                saw_stun = true;
                let _ = agent.handle_stun(Instant::now(), from, &buf[..n]);
            } else {
                assert!(saw_stun, "media before any STUN");
                first_media_after_stun = true;
            }
        }
    }
    assert!(
        first_media_after_stun,
        "media flows once the address is checked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_info_dtmf_is_played_as_rfc4733_toward_http3() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = test_config(15363, 15546, 32600, "info");
    cfg.media.security = MediaSecurity::Rtp;
    cfg.media.ice = IceMode::Off;
    let _running = riptide::gateway::start(cfg).await.expect("gateway starts");
    let sip: SocketAddr = "127.0.0.1:15363".parse().unwrap();
    let ua = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = ua.local_addr().unwrap();
    let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let offer = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=sendrecv\r\n",
        media.local_addr().unwrap().port()
    );
    ua.send_to(invite(sip, me, "info1", &offer).as_bytes(), sip)
        .await
        .unwrap();
    let ok = until(&ua, &["SIP/2.0 200"]).await;
    let tag = to_tag(&ok);
    ua.send_to(ack(sip, me, "info1", &tag).as_bytes(), sip)
        .await
        .unwrap();
    // The echo reflects what reaches the HTTP/3 side. The first packets may meet no QUIC route
    // yet (the media stream can still be opening when the echo answers), so try a few.
    let gw: SocketAddr = ([127, 0, 0, 1], media_port(&ok)).into();
    let mut echoed = false;
    for seq in 1..=10 {
        if round_trip(&media, gw, &rtp(seq)).await.is_some() {
            echoed = true;
            break;
        }
    }
    assert!(echoed, "the call's media flows before the INFO");
    let body = "Signal=3\r\nDuration=100\r\n";
    let info = format!(
        "INFO sip:riptide@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKinfo1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:+12155551212@{me}>;tag=tinfo1\r\nTo: <sip:echo@{sip}>;tag={tag}\r\nCall-ID: info1\r\nCSeq: 2 INFO\r\nContent-Type: application/dtmf-relay\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    ua.send_to(info.as_bytes(), sip).await.unwrap();
    let answer = until(&ua, &["SIP/2.0"]).await;
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    // The key comes back through the echo as RFC 4733 events: event 3, ending with the E bit.
    let mut buf = [0u8; 2048];
    let mut events = 0;
    let mut ended = false;
    while let Ok(Ok((n, _))) = timeout(Duration::from_millis(500), media.recv_from(&mut buf)).await
    {
        if n == 16 && buf[1] & 0x7f == 101 {
            assert_eq!(buf[12], 3, "event code of key 3");
            events += 1;
            ended |= buf[13] & 0x80 != 0;
        }
    }
    assert!(events >= 4, "{events} telephone-event packets");
    assert!(ended, "the end of the event was sent");
}
