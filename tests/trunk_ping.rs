//! `[[sip_trunk]] ping_secs` against a real `riptide serve` (ADR 0033): the trunk, a plain UDP
//! socket, first ignores the gateway's OPTIONS, and the gateway counts its address down; then it
//! answers, and the address is up again at the next round.

mod cli_support;

use cli_support::{start_server, temp_dir};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// The admin listener's `riptide_sip_trunk_addresses_up` line for trunk `pbx`, if any.
fn addresses_up(admin: SocketAddr) -> Option<String> {
    let mut c = TcpStream::connect(admin).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    c.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with("riptide_sip_trunk_addresses_up{trunk=\"pbx\"}"))
        .map(str::to_string)
}

/// Waits up to `within` for the gauge to read `want`.
fn wait_for(admin: SocketAddr, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        last = addresses_up(admin);
        if last.as_deref().is_some_and(|l| l.ends_with(want)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("riptide_sip_trunk_addresses_up never read {want}: last {last:?}");
}

/// A response to `req` (an OPTIONS) with status `code`.
fn answer(req: &str, code: &str) -> String {
    let mut out = format!("SIP/2.0 {code}\r\n");
    for l in req.lines() {
        let name = l.split(':').next().unwrap_or("").to_ascii_lowercase();
        if ["via", "from", "call-id", "cseq"].contains(&name.as_str()) {
            out.push_str(l);
            out.push_str("\r\n");
        } else if name == "to" {
            out.push_str(&format!("{l};tag=trunk1\r\n"));
        }
    }
    out.push_str("Allow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\nContent-Length: 0\r\n\r\n");
    out
}

#[test]
fn a_trunk_that_ignores_pings_is_counted_down_and_up_again_once_it_answers() {
    let dir = temp_dir("trunk-ping");
    let trunk = UdpSocket::bind("127.0.0.1:0").unwrap();
    trunk
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let at = trunk.local_addr().unwrap();
    let gw = start_server(
        &dir,
        &format!(
            "[[sip_trunk]]\nname = \"pbx\"\ntarget = \"sip:{at};transport=udp\"\nping_secs = 5\n"
        ),
    );
    // The first round goes at start; it is left unanswered (retransmissions too), so the
    // second round, 5 s later, finds the address down.
    let mut buf = [0u8; 4096];
    let mut first = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        if let Ok((n, from)) = trunk.recv_from(&mut buf) {
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            first.get_or_insert((req, from));
        }
    }
    let (req, from) = first.expect("an OPTIONS from the gateway within 4 s of its start");
    assert!(
        req.starts_with(&format!("OPTIONS sip:{at} SIP/2.0\r\n")),
        "{req}"
    );
    assert_eq!(from, gw.sip, "sent from the gateway's SIP listener");
    wait_for(gw.admin, " 0", Duration::from_secs(10));
    // From now on it answers every OPTIONS.
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut answered = 0;
    let mut up = false;
    while Instant::now() < deadline && !up {
        if let Ok((n, from)) = trunk.recv_from(&mut buf) {
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            if req.starts_with("OPTIONS ") {
                trunk
                    .send_to(answer(&req, "200 OK").as_bytes(), from)
                    .unwrap();
                answered += 1;
            }
        }
        up = addresses_up(gw.admin).is_some_and(|l| l.ends_with(" 1"));
    }
    assert!(up, "still down after {answered} answered pings");
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap();
    assert!(log.contains("trunk address down"), "{log}");
    assert!(log.contains("trunk address up again"), "{log}");
}
