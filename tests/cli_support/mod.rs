//! What the tests of the client tools (`riptide call`, `riptide answer`) share: a real
//! `riptide serve` on free ports, a client configuration with a minted token, tones and their
//! detection, the summary's fields.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_riptide");

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "riptide-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A port free on loopback for both UDP and TCP at the time of asking.
pub fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Kills the child process when the test ends, passed or not.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `secs` of a `hz` tone at 8 kHz.
pub fn tone(hz: f64, secs: f64) -> Vec<i16> {
    let n = (8000.0 * secs) as usize;
    (0..n)
        .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / 8000.0).sin()) as i16)
        .collect()
}

/// A tone as an 8 kHz mono 16-bit PCM WAV file.
pub fn tone_wav(path: &Path, hz: f64, secs: f64) {
    std::fs::write(path, riptide::client_tool::wav::encode(&tone(hz, secs))).unwrap();
}

/// Power of `hz` in `x` (Goertzel), normalised by the length.
pub fn goertzel(x: &[i16], hz: f64) -> f64 {
    let k = 2.0 * (2.0 * std::f64::consts::PI * hz / 8000.0).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s = f64::from(v) + k * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - k * s1 * s2) / (x.len() as f64 * x.len() as f64)
}

/// Asserts that the WAV file at `path` is mostly a `hz` tone, at least `min_samples` long.
pub fn assert_tone(path: &Path, hz: f64, min_samples: usize) {
    let recorded = riptide::client_tool::wav::read(path).unwrap();
    assert!(recorded.len() >= min_samples, "{} samples", recorded.len());
    let tone_power = goertzel(&recorded, hz);
    let off_power = goertzel(&recorded, 1000.0);
    assert!(
        tone_power > 100.0 * off_power && tone_power > 1e5,
        "{hz} Hz {tone_power}, 1000 Hz {off_power}"
    );
}

/// A running `riptide serve`.
pub struct Gateway {
    _server: Killed,
    /// Its HTTP/3 address.
    pub h3: SocketAddr,
    /// Its SIP address (UDP and TCP).
    pub sip: SocketAddr,
    /// Its admin listener (`/metrics`).
    pub admin: SocketAddr,
    pub data: PathBuf,
}

/// Starts `riptide serve` with `extra` (its `[[tg]]`s and routes) appended to a configuration
/// of free loopback ports.
pub fn start_server(dir: &Path, extra: &str) -> Gateway {
    start_server_with(dir, "", extra, Command::new(BIN))
}

/// As [`start_server`], with `sip_extra` added to its `[sip]` table, run by `command` (the
/// binary, or a wrapper that ends by running the arguments given to it).
pub fn start_server_with(
    dir: &Path,
    sip_extra: &str,
    extra: &str,
    mut command: Command,
) -> Gateway {
    let data = dir.join("server");
    let (sip, h3, admin) = (free_port(), free_port(), free_port());
    // Ten media ports that are free now: a port another process holds fails its call with 503.
    let media = loop {
        let base = 30000 + (rand::random::<u16>() % 2000) * 10;
        if (base..base + 10).all(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            break base;
        }
    };
    let cfg = dir.join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[general]
data_dir = "{data}"

[sip]
udp = ["127.0.0.1:{sip}"]
tcp = ["127.0.0.1:{sip}"]
{sip_extra}

[http3]
listen = "127.0.0.1:{h3}"
server_name = "localhost"

[admin]
listen = "127.0.0.1:{admin}"

[media]
ip = "127.0.0.1"
port_min = {media}
port_max = {}

{extra}"#,
            media + 9,
            data = data.display()
        ),
    )
    .unwrap();
    let child = command
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log")).unwrap())
        .spawn()
        .expect("riptide serve starts");
    let server = Killed(child);
    // Ready once the admin listener (started after the HTTP/3 one) accepts.
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", admin)).is_err() {
        assert!(
            Instant::now() < deadline,
            "riptide serve did not come up: {}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(data.join("cert.pem").exists());
    Gateway {
        _server: server,
        h3: ([127, 0, 0, 1], h3).into(),
        sip: ([127, 0, 0, 1], sip).into(),
        admin: ([127, 0, 0, 1], admin).into(),
        data,
    }
}

/// A client configuration naming the gateway as `[[ript_peer]] gw` on TG `tg`, with a token
/// minted by the gateway's issuer (`scopes`, or the default ones when empty).
pub fn client_config(dir: &Path, gw: &Gateway, tg: &str, scopes: &[&str]) -> PathBuf {
    let mut args = vec!["token", "mint", "--data-dir", gw.data.to_str().unwrap()];
    for s in scopes {
        args.extend(["--scope", s]);
    }
    let out = Command::new(BIN).args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    std::fs::write(dir.join("token"), text(&out.stdout).trim()).unwrap();
    let cfg = dir.join("client.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[general]
data_dir = "{dir}/client"

[[ript_peer]]
name = "gw"
url = "https://{h3}"
server_name = "localhost"
tg = "{tg}"
ca_file = "{data}/cert.pem"
token_file = "{dir}/token"
"#,
            dir = dir.display(),
            h3 = gw.h3,
            data = gw.data.display()
        ),
    )
    .unwrap();
    cfg
}

/// `name: <number>` from a summary.
pub fn field(summary: &str, name: &str) -> f64 {
    let line = summary
        .lines()
        .find(|l| l.starts_with(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name:?} in {summary}"));
    line[name.len() + 1..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number in {line:?}"))
}

/// dnsmasq answering only from `records` (its `--srv-host` / `--host-record` options) for the
/// `srv.test` domain (NXDOMAIN for other names there), on 127.0.0.1; stopped when dropped.
pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
}

impl Dnsmasq {
    /// On a free port.
    pub fn start(records: &[String]) -> Dnsmasq {
        Dnsmasq::start_on(free_port(), records)
    }

    /// On `port` (to stand in for one that was stopped).
    pub fn start_on(port: u16, records: &[String]) -> Dnsmasq {
        // Debian puts it in /usr/sbin, which is not on every user's PATH.
        let bin = ["/usr/sbin/dnsmasq", "dnsmasq"]
            .into_iter()
            .find(|b| Command::new(b).arg("--version").output().is_ok())
            .expect("dnsmasq is installed (package dnsmasq-base; interop/test-all.sh installs it)");
        let log = std::env::temp_dir().join(format!("riptide-dnsmasq-{port}.log"));
        let mut child = Command::new(bin)
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--local=/srv.test/",
                "--user=root",
                "--pid-file=",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .args(records)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("dnsmasq's log file"))
            .spawn()
            .expect("dnsmasq starts");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // It listens on TCP as well once it is up.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let err = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("dnsmasq exited ({status}): {err}");
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not come up on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Dnsmasq { child, addr }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
