//! A `[[sip_trunk]]` named by a host name (ADR 0020): every address of the name is tried in
//! turn, and a name that now resolves elsewhere is followed without a restart.
//!
//! In the first test `riptide serve` runs in a mount namespace of its own (`unshare -m`) whose
//! `/etc/hosts` is this test's file, bind-mounted, so that the test decides what `pbx.test`
//! resolves to and can change it while the gateway runs. In the second, a name without a port is
//! looked up for SRV records (RFC 3263) at a dnsmasq of the test's own (`[sip] dns_servers`). The
//! third has peers that name another host in their Contact, where the call's BYE must go; the
//! fourth, a trunk that redirects to a host name; the fifth, a trunk whose NAPTR records choose
//! TCP. The SIP peers are plain sockets on 127.0.0.2–9 answering as a trunk would.

mod cli_support;

use cli_support::{
    client_config, free_port, start_server_with, temp_dir, text, tone_wav, Dnsmasq, BIN,
};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A trunk address: answers each INVITE with `code` (200 with an SDP answer, 302 to its
/// Contact, or 503 with Retry-After), takes ACKs, answers BYE with 200, and keeps the CSeq of every INVITE it got.
/// Over UDP, or over TCP (one thread per connection).
struct Peer {
    invites: Arc<Mutex<Vec<String>>>,
    /// Every request's first line.
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Where the gateway's RTP for an answered call goes (read and dropped by the kernel).
    _media: UdpSocket,
}

/// What a [`Peer`] at `addr` answers to `req`, if anything.
struct Answers {
    code: u16,
    ip: String,
    contact: String,
    media_port: u16,
    invites: Arc<Mutex<Vec<String>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Answers {
    fn to(&self, req: &str) -> Option<String> {
        let ip = &self.ip;
        if !req.starts_with("SIP/2.0 ") {
            let line = req.lines().next().unwrap_or("").to_string();
            self.requests.lock().unwrap().push(line);
        }
        if req.starts_with("INVITE ") {
            self.invites.lock().unwrap().push(header(req, "CSeq"));
            if self.code == 302 {
                return Some(response(
                    req,
                    "302 Moved Temporarily",
                    &self.contact,
                    "",
                    "",
                ));
            }
            if self.code == 200 {
                let sdp = format!(
                    "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
                     m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n",
                    self.media_port
                );
                Some(response(req, "200 OK", &self.contact, "", &sdp))
            } else {
                Some(response(
                    req,
                    "503 Service Unavailable",
                    "",
                    "Retry-After: 300\r\n",
                    "",
                ))
            }
        } else if req.starts_with("BYE ") {
            Some(response(req, "200 OK", "", "", ""))
        } else {
            None
        }
    }
}

impl Peer {
    fn start(ip: &str, port: u16, code: u16) -> Peer {
        Peer::start_with_contact(ip, port, code, None)
    }

    /// As [`Peer::start`], answering with `contact` (default: its own address).
    fn start_with_contact(ip: &str, port: u16, code: u16, contact: Option<&str>) -> Peer {
        let sock = UdpSocket::bind((ip, port)).unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        Peer::run(
            ip,
            code,
            contact.map_or_else(|| format!("<sip:pbx@{addr}>"), str::to_string),
            move |answers, stop| {
                let mut buf = [0u8; 65535];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(reply) = answers.to(&String::from_utf8_lossy(&buf[..n])) {
                        let _ = sock.send_to(reply.as_bytes(), from);
                    }
                }
            },
        )
    }

    fn start_tcp(ip: &str, port: u16, code: u16) -> Peer {
        let listener =
            TcpListener::bind((ip, port)).unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let contact = format!("<sip:pbx@{addr};transport=tcp>");
        Peer::run(ip, code, contact, move |answers, stop| {
            let answers = Arc::new(answers);
            while !stop.load(Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                let (answers, stop) = (answers.clone(), stop.clone());
                std::thread::spawn(move || serve_tcp(conn, &answers, &stop));
            }
        })
    }

    fn run(
        ip: &str,
        code: u16,
        contact: String,
        serve: impl FnOnce(Answers, Arc<AtomicBool>) + Send + 'static,
    ) -> Peer {
        let media = UdpSocket::bind((ip, 0)).unwrap();
        let invites = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let answers = Answers {
            code,
            ip: ip.to_string(),
            contact,
            media_port: media.local_addr().unwrap().port(),
            invites: invites.clone(),
            requests: requests.clone(),
        };
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || serve(answers, stop))
        };
        Peer {
            invites,
            requests,
            stop,
            thread: Some(thread),
            _media: media,
        }
    }

    fn invites(&self) -> Vec<String> {
        self.invites.lock().unwrap().clone()
    }

    /// The first lines of the requests with `method` it got.
    fn got(&self, method: &str) -> Vec<String> {
        let prefix = format!("{method} ");
        let all = self.requests.lock().unwrap();
        all.iter()
            .filter(|l| l.starts_with(&prefix))
            .cloned()
            .collect()
    }
}

/// Reads SIP messages from one TCP connection (framed by Content-Length) and answers them on it.
fn serve_tcp(mut conn: TcpStream, answers: &Answers, stop: &AtomicBool) {
    conn.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => continue,
        }
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let body = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    (n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("l"))
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() < end + 4 + body {
                break;
            }
            let msg: Vec<u8> = buf.drain(..end + 4 + body).collect();
            if let Some(reply) = answers.to(&String::from_utf8_lossy(&msg)) {
                let _ = conn.write_all(reply.as_bytes());
            }
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn header(msg: &str, name: &str) -> String {
    msg.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no {name} in {msg}"))
}

fn response(req: &str, status: &str, contact: &str, extra: &str, sdp: &str) -> String {
    let to = header(req, "To");
    let to = if to.contains(";tag=") {
        to
    } else {
        format!("{to};tag=pbx1")
    };
    let contact = if contact.is_empty() {
        String::new()
    } else {
        format!("Contact: {contact}\r\n")
    };
    let ct = if sdp.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "SIP/2.0 {status}\r\nVia: {}\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n\
         {contact}{extra}{ct}Content-Length: {}\r\n\r\n{sdp}",
        header(req, "Via"),
        header(req, "From"),
        header(req, "Call-ID"),
        header(req, "CSeq"),
        sdp.len()
    )
}

/// `riptide serve` in a mount namespace whose /etc/hosts is `hosts`.
fn in_own_hosts(hosts: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args([
        "-m",
        "sh",
        "-c",
        r#"mount --bind "$0" /etc/hosts && exec "$@""#,
    ])
    .arg(hosts)
    .arg(BIN)
    // A name that is not in the file goes on to DNS: an answer, or none, at once.
    .env("RES_OPTIONS", "timeout:1 attempts:1");
    c
}

/// A mount namespace with a bind mount ([`in_own_hosts`]) needs root, as the test machines run;
/// says so plainly where it is missing rather than pass without testing anything.
fn needs_unshare() {
    let probe = Command::new("unshare")
        .args(["-m", "true"])
        .output()
        .expect("unshare (util-linux) runs");
    assert!(
        probe.status.success(),
        "this test needs `unshare -m` and `mount --bind` (root): {}",
        text(&probe.stderr)
    );
}

/// The routes and trunks of a gateway's configuration: TG `local` sends calls whose destination
/// starts with each prefix to its trunk (plain RTP, no ICE). `trunks`: (prefix, name, target),
/// in route order.
fn trunk_config(trunks: &[(&str, &str, &str)]) -> String {
    let mut c = String::from("[[tg]]\nname = \"local\"\n");
    for (prefix, name, _) in trunks {
        c += &format!("\n  [[tg.route]]\n  prefix = \"{prefix}\"\n  sip_trunk = \"{name}\"\n");
    }
    for (_, name, target) in trunks {
        c += &format!(
            "\n[[sip_trunk]]\nname = \"{name}\"\ntarget = \"{target}\"\nsecurity = \"rtp\"\nice = \"off\"\n"
        );
    }
    c
}

/// What `riptide call` needs to call through `gw`: its client configuration, and a one-second
/// tone to play.
fn caller(dir: &Path, gw: &cli_support::Gateway) -> (std::path::PathBuf, std::path::PathBuf) {
    let cfg = client_config(dir, gw, "local", &[]);
    let tone = dir.join("tone.wav");
    tone_wav(&tone, 440.0, 1.0);
    (cfg, tone)
}

/// The gateway's log so far, for assertion messages.
fn server_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
}

/// `riptide call` to `target`, which must answer (`log` tells the gateway's side if not).
fn answered_call(cfg: &Path, tone: &Path, target: &str, log: &dyn Fn() -> String) {
    let out: Output = Command::new(BIN)
        .args(["call", "--config", cfg.to_str().unwrap(), "--play"])
        .arg(tone)
        .args(["--duration", "1", target])
        .output()
        .expect("riptide call runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        log()
    );
}

#[test]
fn every_address_of_a_trunk_name_is_tried_and_a_changed_name_is_followed() {
    needs_unshare();
    let dir = temp_dir("trunk-dns");
    let port = free_port();
    let hosts = dir.join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost\n127.0.0.2 pbx.test\n127.0.0.3 pbx.test\n\
         127.0.0.5 pbx-tcp.test\n127.0.0.6 pbx-tcp.test\n",
    )
    .unwrap();
    // getaddrinfo gives both in file order (RFC 6724's rules do not tell them apart from
    // 127.0.0.1); the system resolver reads the file each time (no caching daemon here).
    let refusing = Peer::start("127.0.0.2", port, 503);
    let answering = Peer::start("127.0.0.3", port, 200);
    let gw = start_server_with(
        &dir,
        "dns_refresh_secs = 1",
        &trunk_config(&[
            ("", "pbx", &format!("sip:pbx.test:{port}")),
            (
                "tcp",
                "pbx-tcp",
                &format!("sip:pbx-tcp.test:{port};transport=tcp"),
            ),
        ]),
        in_own_hosts(&hosts),
    );
    let (cfg, tone) = caller(&dir, &gw);
    let log = || server_log(&dir);

    // The first address refuses with 503: the INVITE goes on to the second, which answers.
    answered_call(&cfg, &tone, "sip:answer@pbx.test", &log);
    assert_eq!(refusing.invites(), vec!["1 INVITE"], "{}", log());
    assert_eq!(answering.invites(), vec!["2 INVITE"], "{}", log());
    assert!(log().contains("failing over"), "{}", log());

    // Over TCP, nothing listens at the first address: the refused connect sends the INVITE on
    // to the second at once (not after Timer B).
    let tcp_answering = Peer::start_tcp("127.0.0.6", port, 200);
    answered_call(&cfg, &tone, "sip:tcp1@pbx-tcp.test", &log);
    assert_eq!(tcp_answering.invites(), vec!["2 INVITE"], "{}", log());
    assert!(
        log()
            .lines()
            .any(|l| l.contains("failing over") && l.contains("transport")),
        "{}",
        log()
    );

    // The name moves to a third address; the gateway follows it within its refresh period.
    let moved = Peer::start("127.0.0.4", port, 200);
    // Rewritten in place (same inode): the bind mount shows the new text. A rename would not.
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.4 pbx.test\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !log().contains("trunk addresses changed") {
        assert!(
            Instant::now() < deadline,
            "the new address was not picked up: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    answered_call(&cfg, &tone, "sip:answer@pbx.test", &log);
    assert_eq!(moved.invites(), vec!["1 INVITE"], "{}", log());
    assert_eq!(
        refusing.invites().len(),
        1,
        "the old addresses got nothing more"
    );
    assert_eq!(
        answering.invites().len(),
        1,
        "the old addresses got nothing more"
    );
    drop(gw);
}

#[test]
fn srv_records_name_a_trunks_servers_in_priority_order_and_changes_are_followed() {
    let dir = temp_dir("trunk-srv");
    let (sip_port, dns_port) = (free_port(), free_port());
    let srv = |target: &str, priority: u16| {
        format!("--srv-host=_sip._udp.pbx.srv.test,{target}.srv.test,{sip_port},{priority},0")
    };
    let host = |name: &str, ip: &str| format!("--host-record={name}.srv.test,{ip}");
    // Priority 10 refuses with 503, priority 20 answers. The name itself has an A record too,
    // where nothing listens: it must not be used while SRV records exist.
    let dns = Dnsmasq::start_on(
        dns_port,
        &[
            srv("first", 10),
            srv("second", 20),
            host("first", "127.0.0.2"),
            host("second", "127.0.0.3"),
            host("pbx", "127.0.0.5"),
        ],
    );
    let refusing = Peer::start("127.0.0.2", sip_port, 503);
    let answering = Peer::start("127.0.0.3", sip_port, 200);
    let gw = start_server_with(
        &dir,
        &format!("dns_refresh_secs = 1\ndns_servers = [\"127.0.0.1:{dns_port}\"]"),
        &trunk_config(&[("", "pbx", "sip:pbx.srv.test")]),
        Command::new(BIN),
    );
    let (cfg, tone) = caller(&dir, &gw);
    let log = || server_log(&dir);

    answered_call(&cfg, &tone, "sip:answer@pbx.srv.test", &log);
    assert_eq!(refusing.invites(), vec!["1 INVITE"], "{}", log());
    assert_eq!(answering.invites(), vec!["2 INVITE"], "{}", log());
    // Lookups every second find the same records: no change to pass on.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!log().contains("trunk addresses changed"), "{}", log());

    // The provider adds a server of priority 5: the gateway follows the new answer without a
    // restart, and the next call goes there first.
    drop(dns);
    let preferred = Peer::start("127.0.0.4", sip_port, 200);
    let _dns = Dnsmasq::start_on(
        dns_port,
        &[
            srv("third", 5),
            srv("first", 10),
            srv("second", 20),
            host("first", "127.0.0.2"),
            host("second", "127.0.0.3"),
            host("third", "127.0.0.4"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !log()
        .lines()
        .any(|l| l.contains("trunk addresses changed") && l.contains("127.0.0.4"))
    {
        assert!(
            Instant::now() < deadline,
            "the new SRV answer was not picked up: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    answered_call(&cfg, &tone, "sip:answer@pbx.srv.test", &log);
    assert_eq!(preferred.invites(), vec!["1 INVITE"], "{}", log());
    assert_eq!(refusing.invites().len(), 1, "{}", log());
    assert_eq!(answering.invites().len(), 1, "{}", log());
    drop(gw);
}

#[test]
fn a_bye_goes_to_the_host_name_the_answers_contact_names() {
    let dir = temp_dir("dialog-dns");
    let (sip_port, far_port, dns_port) = (free_port(), free_port(), free_port());
    // far.dialog.test by its A record (the Contact has a port); srv.dialog.test by SRV.
    let _dns = Dnsmasq::start_on(
        dns_port,
        &[
            "--host-record=far.dialog.test,127.0.0.3".into(),
            format!("--srv-host=_sip._udp.srv.dialog.test,media.dialog.test,{far_port},10,0"),
            "--host-record=media.dialog.test,127.0.0.4".into(),
        ],
    );
    let by_a = Peer::start_with_contact(
        "127.0.0.2",
        sip_port,
        200,
        Some(&format!("<sip:pbx@far.dialog.test:{far_port}>")),
    );
    let by_srv = Peer::start_with_contact(
        "127.0.0.5",
        sip_port,
        200,
        Some("<sip:pbx@srv.dialog.test>"),
    );
    let far = Peer::start("127.0.0.3", far_port, 200);
    let srv_far = Peer::start("127.0.0.4", far_port, 200);
    let gw = start_server_with(
        &dir,
        &format!("dns_servers = [\"127.0.0.1:{dns_port}\"]"),
        &trunk_config(&[
            ("srv", "by-srv", &format!("sip:127.0.0.5:{sip_port}")),
            ("", "by-a", &format!("sip:127.0.0.2:{sip_port}")),
        ]),
        Command::new(BIN),
    );
    let (cfg, tone) = caller(&dir, &gw);
    let log = || server_log(&dir);

    // The caller hangs up after a second: the BYE goes to the Contact's host, not the trunk.
    answered_call(&cfg, &tone, "sip:answer@127.0.0.2", &log);
    let wait_for_bye = |peer: &Peer| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while peer.got("BYE").is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for_bye(&far);
    assert_eq!(
        far.got("BYE"),
        vec![format!("BYE sip:pbx@far.dialog.test:{far_port} SIP/2.0")],
        "{}",
        log()
    );
    assert_eq!(by_a.invites(), vec!["1 INVITE"]);
    assert!(by_a.got("BYE").is_empty(), "{}", log());
    // The ACK left toward the trunk before the answer came, and went there again after it.
    assert_eq!(far.got("ACK").len(), 1, "{}", log());

    // A Contact without a port: its SRV records name the host and port.
    answered_call(&cfg, &tone, "sip:srv1@127.0.0.5", &log);
    wait_for_bye(&srv_far);
    assert_eq!(
        srv_far.got("BYE"),
        vec!["BYE sip:pbx@srv.dialog.test SIP/2.0".to_string()],
        "{}",
        log()
    );
    assert!(by_srv.got("BYE").is_empty(), "{}", log());
    drop(gw);
}

#[test]
fn a_redirect_to_a_host_name_is_looked_up_and_its_servers_tried_in_turn() {
    let dir = temp_dir("redirect-dns");
    let (sip_port, moved_port, dns_port) = (free_port(), free_port(), free_port());
    // moved.redirect.test has no port in the 302's Contact: its SRV records name two servers,
    // the first (priority 10) unavailable, the second (priority 20) answering.
    let _dns = Dnsmasq::start_on(
        dns_port,
        &[
            format!(
                "--srv-host=_sip._udp.moved.redirect.test,busy.redirect.test,{moved_port},10,0"
            ),
            format!("--srv-host=_sip._udp.moved.redirect.test,pbx.redirect.test,{moved_port},20,0"),
            "--host-record=busy.redirect.test,127.0.0.7".into(),
            "--host-record=pbx.redirect.test,127.0.0.8".into(),
        ],
    );
    let redirecting = Peer::start_with_contact(
        "127.0.0.6",
        sip_port,
        302,
        Some("<sip:ported@moved.redirect.test>"),
    );
    let busy = Peer::start("127.0.0.7", moved_port, 503);
    let answering = Peer::start("127.0.0.8", moved_port, 200);
    let gw = start_server_with(
        &dir,
        &format!("dns_servers = [\"127.0.0.1:{dns_port}\"]"),
        &trunk_config(&[("", "lnp", &format!("sip:127.0.0.6:{sip_port}"))]),
        Command::new(BIN),
    );
    let (cfg, tone) = caller(&dir, &gw);
    let log = || server_log(&dir);

    answered_call(&cfg, &tone, "sip:answer@127.0.0.6", &log);
    assert_eq!(redirecting.invites(), vec!["1 INVITE"], "{}", log());
    assert_eq!(
        busy.got("INVITE"),
        vec!["INVITE sip:ported@moved.redirect.test SIP/2.0".to_string()],
        "{}",
        log()
    );
    assert_eq!(
        answering.got("INVITE"),
        vec!["INVITE sip:ported@moved.redirect.test SIP/2.0".to_string()],
        "{}",
        log()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while answering.got("BYE").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(answering.got("BYE").len(), 1, "{}", log());
    drop(gw);
}

#[test]
fn a_trunk_whose_naptr_records_choose_tcp_is_called_over_tcp() {
    let dir = temp_dir("naptr-dns");
    let (sip_port, dns_port) = (free_port(), free_port());
    // carrier.naptr.test names no transport: its NAPTR records prefer TCP, whose SRV record
    // names the one server. Over UDP nothing answers there.
    let _dns = Dnsmasq::start_on(
        dns_port,
        &[
            "--naptr-record=carrier.naptr.test,10,10,s,SIP+D2T,,_sip._tcp.carrier.naptr.test"
                .into(),
            "--naptr-record=carrier.naptr.test,20,10,s,SIP+D2U,,_sip._udp.carrier.naptr.test"
                .into(),
            format!("--srv-host=_sip._tcp.carrier.naptr.test,edge.naptr.test,{sip_port},10,0"),
            format!("--srv-host=_sip._udp.carrier.naptr.test,edge.naptr.test,{sip_port},10,0"),
            "--host-record=edge.naptr.test,127.0.0.9".into(),
        ],
    );
    let answering = Peer::start_tcp("127.0.0.9", sip_port, 200);
    let gw = start_server_with(
        &dir,
        &format!("dns_servers = [\"127.0.0.1:{dns_port}\"]"),
        &trunk_config(&[("", "carrier", "sip:carrier.naptr.test")]),
        Command::new(BIN),
    );
    let (cfg, tone) = caller(&dir, &gw);
    let log = || server_log(&dir);
    answered_call(&cfg, &tone, "sip:answer@carrier.naptr.test", &log);
    assert_eq!(answering.invites(), vec!["1 INVITE"], "{}", log());
    drop(gw);
}

#[test]
fn a_trunk_name_not_found_at_start_gets_503_until_a_lookup_finds_it() {
    needs_unshare();
    let dir = temp_dir("trunk-late-dns");
    let port = free_port();
    let hosts = dir.join("hosts");
    // `late.test` is nowhere yet: the gateway must start all the same.
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let peer = Peer::start("127.0.0.7", port, 200);
    let gw = start_server_with(
        &dir,
        "dns_refresh_secs = 1",
        &trunk_config(&[("", "late", &format!("sip:late.test:{port}"))]),
        in_own_hosts(&hosts),
    );
    let (cfg, tone) = caller(&dir, &gw);
    let log = || server_log(&dir);
    assert!(
        log().contains("trunk host name not found at start"),
        "{}",
        log()
    );
    let out = Command::new(BIN)
        .args(["call", "--config", cfg.to_str().unwrap(), "--play"])
        .arg(&tone)
        .args(["--duration", "1", "sip:answer@late.test"])
        .output()
        .expect("riptide call runs");
    assert_ne!(out.status.code(), Some(0), "{}", log());
    assert!(
        log().contains("no address for the trunk's host name yet: 503"),
        "{}",
        log()
    );
    assert!(peer.invites().is_empty());
    // The name appears: the next lookup finds it and calls go through.
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.7 late.test\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !log().contains("trunk addresses changed") {
        assert!(
            Instant::now() < deadline,
            "the name was not picked up: {}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    answered_call(&cfg, &tone, "sip:answer@late.test", &log);
    assert_eq!(peer.invites(), vec!["1 INVITE"], "{}", log());
    drop(gw);
}
