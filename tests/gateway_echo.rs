//! The whole gateway in-process on loopback: a SIP call over UDP to the built-in echo service
//! crosses to the gateway's own HTTP/3 server and its RTP comes back; malformed input is answered
//! or dropped and counted without disturbing the call; TCP keep-alives are answered.

mod common;

use riptide::config::{self, Config};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

fn test_config(sip_port: u16, h3_port: u16, media: u16, tag: &str) -> Config {
    let mut cfg = config::embedded_default();
    let dir = std::env::temp_dir().join(format!("riptide-echo-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    cfg.general.data_dir = dir;
    let sip: SocketAddr = ([127, 0, 0, 1], sip_port).into();
    cfg.sip.udp = vec![sip];
    cfg.sip.tcp = vec![sip];
    cfg.http3.listen = ([127, 0, 0, 1], h3_port).into();
    cfg.admin.listen = None;
    cfg.media.port_min = media;
    cfg.media.port_max = media + 99;
    cfg
}

fn invite(sip: SocketAddr, me: SocketAddr, rtp: SocketAddr, call_id: &str) -> String {
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n",
        rtp.port()
    );
    format!(
        "INVITE sip:echo@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{call_id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:+12155551212@{me}>;tag=t{call_id}\r\nTo: <sip:echo@{sip}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:test@{me}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

fn in_dialog(
    method: &str,
    sip: SocketAddr,
    me: SocketAddr,
    call_id: &str,
    to_tag: &str,
    cseq: u32,
) -> String {
    format!(
        "{method} sip:riptide@{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{method}{call_id};rport\r\nMax-Forwards: 70\r\nFrom: <sip:+12155551212@{me}>;tag=t{call_id}\r\nTo: <sip:echo@{sip}>;tag={to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

async fn recv_text(sock: &UdpSocket) -> String {
    let mut buf = vec![0u8; 65536];
    let (n, _) = timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
        .await
        .expect("a SIP message within 10 s")
        .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Receives SIP messages until one whose start line begins with `prefix`.
async fn until(sock: &UdpSocket, prefix: &str) -> String {
    loop {
        let m = recv_text(sock).await;
        if m.starts_with(prefix) {
            return m;
        }
    }
}

fn header<'a>(m: &'a str, name: &str) -> Option<&'a str> {
    m.lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        })
        .map(|l| l.split_once(':').map(|x| x.1.trim()).unwrap_or(""))
}

/// `GET /.well-known/ript/v1/providertgs` over HTTP/3, trusting the gateway's own certificate
/// by its pin; returns the status and WWW-Authenticate.
async fn h3_get(
    addr: SocketAddr,
    data_dir: &std::path::Path,
    token: Option<&str>,
) -> (u16, String) {
    use bytes::Bytes;
    let client_cfg = common::pinned_client_config(addr, data_dir);
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = ep
        .connect_with(client_cfg, addr, "localhost")
        .unwrap()
        .await
        .expect("QUIC connects");
    let (mut driver, mut send) = h3::client::builder()
        .build::<_, _, Bytes>(h3_quinn::Connection::new(conn))
        .await
        .unwrap();
    tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let mut req = http::Request::builder()
        .method(http::Method::GET)
        .uri(format!(
            "https://localhost:{}/.well-known/ript/v1/providertgs",
            addr.port()
        ));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut s = send.send_request(req.body(()).unwrap()).await.unwrap();
    s.finish().await.unwrap();
    let resp = s.recv_response().await.unwrap();
    let www = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (resp.status().as_u16(), www)
}

/// Reads from a stream until the end of a SIP message head.
async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
    let mut buf = vec![0u8; 4096];
    let mut got = String::new();
    while !got.contains("\r\n\r\n") {
        let n = timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer within 5 s")
            .expect("read");
        assert!(n > 0, "connection closed");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    got
}

fn rtp(seq: u16) -> Vec<u8> {
    riptide::media::rtp::pcmu_packet(seq, 0x1234_5678)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_call_to_echo_gets_its_rtp_back_through_http3() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = test_config(15260, 15443, 31000, "echo");
    let data_dir = cfg.general.data_dir.clone();
    let running = riptide::gateway::start(cfg).await.expect("gateway starts");
    let sip: SocketAddr = "127.0.0.1:15260".parse().unwrap();
    let ua = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = ua.local_addr().unwrap();

    ua.send_to(
        invite(sip, me, media.local_addr().unwrap(), "echo1").as_bytes(),
        sip,
    )
    .await
    .unwrap();
    let ok = until(&ua, "SIP/2.0 200").await;
    let to_tag = header(&ok, "To")
        .and_then(|t| t.split("tag=").nth(1))
        .expect("to-tag")
        .to_string();
    let port: u16 = ok
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("m=audio port in the answer");
    assert!(
        ok.contains("RTP/AVP 0 101"),
        "PCMU and telephone-event kept: {ok}"
    );
    ua.send_to(
        in_dialog("ACK", sip, me, "echo1", &to_tag, 1).as_bytes(),
        sip,
    )
    .await
    .unwrap();

    // RTP to the gateway comes back, relayed over QUIC datagrams to the echo and back.
    let gw_media: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut got = 0;
    let mut buf = [0u8; 2048];
    for seq in 0..50u16 {
        media.send_to(&rtp(seq), gw_media).await.unwrap();
        if let Ok(Ok((n, from))) =
            timeout(Duration::from_millis(200), media.recv_from(&mut buf)).await
        {
            assert_eq!(from, gw_media, "symmetric RTP");
            assert_eq!(n, 172);
            got += 1;
        }
    }
    assert!(got >= 40, "echoed {got} of 50 packets");

    // RFC 4733 telephone-events pass in-band, untouched (digit 5, end bit, PT 101).
    let mut dtmf = rtp(60);
    dtmf[1] = 0x80 | 101;
    dtmf.truncate(12);
    dtmf.extend_from_slice(&[5, 0x80, 0x03, 0x20]);
    let mut echoed = None;
    for _ in 0..10 {
        media.send_to(&dtmf, gw_media).await.unwrap();
        if let Ok(Ok((n, _))) = timeout(Duration::from_millis(200), media.recv_from(&mut buf)).await
        {
            if n == dtmf.len() {
                echoed = Some(buf[..n].to_vec());
                break;
            }
        }
    }
    assert_eq!(
        echoed.as_deref(),
        Some(&dtmf[..]),
        "telephone-event relayed verbatim"
    );

    // Malformed input while the call is up: garbage is dropped and counted, a broken request
    // gets 400, and the call is undisturbed.
    ua.send_to(b"\x16\x03\x01 this is not SIP", sip)
        .await
        .unwrap();
    let broken = invite(sip, me, media.local_addr().unwrap(), "bad1")
        .replace("CSeq: 1 INVITE", "CSeq: x INVITE");
    ua.send_to(broken.as_bytes(), sip).await.unwrap();
    let bad = until(&ua, "SIP/2.0 400").await;
    assert!(bad.contains("CSeq"), "the reason names the problem: {bad}");
    let rendered = running.metrics.render();
    assert!(
        rendered
            .lines()
            .any(|l| l.starts_with("riptide_sip_malformed_total") && !l.ends_with(" 0")),
        "{rendered}"
    );
    // HTTP/3 requests without a valid bearer token get 401 and change nothing.
    let h3: SocketAddr = "127.0.0.1:15443".parse().unwrap();
    let (status, www) = h3_get(h3, &data_dir, None).await;
    assert_eq!(status, 401);
    assert!(www.starts_with("Bearer"), "WWW-Authenticate: {www}");
    let (status, _) = h3_get(h3, &data_dir, Some("not.a.token")).await;
    assert_eq!(status, 401);
    media.send_to(&rtp(100), gw_media).await.unwrap();
    let (n, _) = timeout(Duration::from_secs(2), media.recv_from(&mut buf))
        .await
        .expect("media still flows")
        .unwrap();
    assert_eq!(n, 172);

    ua.send_to(
        in_dialog("BYE", sip, me, "echo1", &to_tag, 2).as_bytes(),
        sip,
    )
    .await
    .unwrap();
    let bye_ok = until(&ua, "SIP/2.0 200").await;
    assert!(bye_ok.contains("CSeq: 2 BYE"), "{bye_ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_options_and_crlf_keepalive() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = test_config(15262, 15444, 31200, "tcp");
    let _running = riptide::gateway::start(cfg).await.expect("gateway starts");
    let mut s = TcpStream::connect("127.0.0.1:15262").await.unwrap();
    let me = s.local_addr().unwrap();
    // RFC 5626 §3.5.1: a CRLFCRLF ping gets a CRLF pong.
    s.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    timeout(Duration::from_secs(5), s.read_exact(&mut pong))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&pong, b"\r\n");
    let opt = format!(
        "OPTIONS sip:127.0.0.1:15262;transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bKtcpo\r\nMax-Forwards: 70\r\nFrom: <sip:ping@{me}>;tag=p\r\nTo: <sip:127.0.0.1:15262>\r\nCall-ID: tcp-opt\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    // Two writes; framing at every split point is the transport unit test's business
    // (`frames_by_content_length_across_chunks`), this checks the live listener.
    s.set_nodelay(true).unwrap();
    let (a, b) = opt.split_at(40);
    s.write_all(a.as_bytes()).await.unwrap();
    s.write_all(b.as_bytes()).await.unwrap();
    let got = read_head(&mut s).await;
    assert!(got.starts_with("SIP/2.0 200 OK"), "{got}");
    assert!(got.contains("Allow: INVITE"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sip_over_tls_is_answered() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cfg = test_config(15266, 15445, 31400, "tls");
    let tls_addr: SocketAddr = "127.0.0.1:15267".parse().unwrap();
    cfg.sip.tls = vec![tls_addr];
    let data_dir = cfg.general.data_dir.clone();
    let _running = riptide::gateway::start(cfg).await.expect("gateway starts");
    let id = riptide::tls::load_or_generate(&data_dir, "localhost", None, None).expect("identity");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(id.cert_chain[0].clone())
        .expect("trust the gateway's certificate");
    let client = rustls::ClientConfig::builder_with_provider(riptide::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = TcpStream::connect(tls_addr).await.unwrap();
    let me = tcp.local_addr().unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = connector
        .connect(name, tcp)
        .await
        .expect("TLS 1.2 handshake with a verified certificate");
    let opt = format!(
        "OPTIONS sips:127.0.0.1:15267 SIP/2.0\r\nVia: SIP/2.0/TLS {me};branch=z9hG4bKtlso\r\nMax-Forwards: 70\r\nFrom: <sips:ping@{me}>;tag=p\r\nTo: <sips:127.0.0.1:15267>\r\nCall-ID: tls-opt\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(opt.as_bytes()).await.unwrap();
    let got = read_head(&mut s).await;
    assert!(got.starts_with("SIP/2.0 200 OK"), "{got}");
    assert!(got.contains("CSeq: 1 OPTIONS"), "{got}");
}
