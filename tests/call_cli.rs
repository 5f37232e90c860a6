//! `riptide call` against a real `riptide serve`: the call goes over HTTP/3 to the built-in
//! echo service, a 440 Hz tone is played and must come back in the recording.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_riptide");

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "riptide-call-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A port free on loopback for both UDP and TCP at the time of asking.
fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Kills the server when the test ends, passed or not.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A 440 Hz tone, 8 kHz mono 16-bit PCM WAV, `secs` long.
fn tone_wav(path: &Path, hz: f64, secs: f64) {
    let n = (8000.0 * secs) as usize;
    let samples: Vec<i16> = (0..n)
        .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / 8000.0).sin()) as i16)
        .collect();
    std::fs::write(path, riptide::client_tool::wav::encode(&samples)).unwrap();
}

/// Power of `hz` in `x` (Goertzel), normalised by the length.
fn goertzel(x: &[i16], hz: f64) -> f64 {
    let k = 2.0 * (2.0 * std::f64::consts::PI * hz / 8000.0).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s = f64::from(v) + k * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - k * s1 * s2) / (x.len() as f64 * x.len() as f64)
}

/// Starts `riptide serve` with a TG `local` routing `echo` to the echo service; returns the
/// server, its HTTP/3 address and data directory.
fn start_server(dir: &Path) -> (Server, SocketAddr, PathBuf) {
    let data = dir.join("server");
    let (sip, h3, admin) = (free_port(), free_port(), free_port());
    let media = 30000 + (rand::random::<u16>() % 2000) * 10;
    let cfg = dir.join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[general]
data_dir = "{data}"

[sip]
udp = ["127.0.0.1:{sip}"]
tcp = ["127.0.0.1:{sip}"]

[http3]
listen = "127.0.0.1:{h3}"
server_name = "localhost"

[admin]
listen = "127.0.0.1:{admin}"

[media]
ip = "127.0.0.1"
port_min = {media}
port_max = {}

[[tg]]
name = "local"

  [[tg.route]]
  prefix = "echo"
  echo = true
"#,
            media + 9,
            data = data.display()
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("riptide serve starts");
    let server = Server(child);
    // Ready once the admin listener (started after the HTTP/3 one) accepts.
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", admin)).is_err() {
        assert!(Instant::now() < deadline, "riptide serve did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(data.join("cert.pem").exists());
    (server, ([127, 0, 0, 1], h3).into(), data)
}

/// A client configuration naming the server as `[[ript_peer]] gw`, with a minted token.
fn client_config(dir: &Path, h3: SocketAddr, data: &Path) -> PathBuf {
    let out = Command::new(BIN)
        .args(["token", "mint", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
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
tg = "local"
ca_file = "{data}/cert.pem"
token_file = "{dir}/token"
"#,
            dir = dir.display(),
            data = data.display()
        ),
    )
    .unwrap();
    cfg
}

fn call(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("call")
        .args(args)
        .output()
        .expect("riptide call runs")
}

/// `name: <number>` from the summary.
fn field(summary: &str, name: &str) -> f64 {
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

#[test]
fn call_to_the_echo_service_returns_the_tone() {
    let dir = temp_dir("echo");
    let (_server, h3, data) = start_server(&dir);
    let cfg = client_config(&dir, h3, &data);
    let tone = dir.join("tone.wav");
    tone_wav(&tone, 440.0, 1.0);
    let rec = dir.join("out.wav");
    let out = call(&[
        "--config",
        cfg.to_str().unwrap(),
        "echo",
        "--play",
        tone.to_str().unwrap(),
        "--record",
        rec.to_str().unwrap(),
        "--duration",
        "3",
        "--dtmf",
        "12#",
    ]);
    let summary = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{summary}\n{}",
        text(&out.stderr)
    );
    let sent = field(&summary, "packets sent");
    let received = field(&summary, "packets received");
    let loss = field(&summary, "loss");
    assert!((sent - 150.0).abs() <= 2.0, "{summary}");
    assert!(received > 100.0, "{summary}");
    assert!(loss < 5.0, "{summary}");
    assert!(field(&summary, "setup time") < 5000.0, "{summary}");
    assert!(summary.contains("dtmf sent:        12#"), "{summary}");
    // The echo service reflects the RFC 4733 events too.
    assert!(summary.contains("dtmf received:    12#"), "{summary}");
    assert!(summary.contains("reached:          answered"), "{summary}");
    assert!(
        summary.contains("end:              ended by us (Q.850;cause=16"),
        "{summary}"
    );

    let recorded = riptide::client_tool::wav::read(&rec).unwrap();
    assert!(recorded.len() >= 100 * 160, "{} samples", recorded.len());
    let tone_power = goertzel(&recorded, 440.0);
    let off_power = goertzel(&recorded, 1000.0);
    assert!(
        tone_power > 100.0 * off_power && tone_power > 1e5,
        "440 Hz {tone_power}, 1000 Hz {off_power}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refusals_and_bad_input_exit_non_zero_with_a_reason() {
    let dir = temp_dir("refused");
    let (_server, h3, data) = start_server(&dir);
    let cfg = client_config(&dir, h3, &data);
    let tone = dir.join("tone.wav");
    tone_wav(&tone, 440.0, 0.2);
    let cfg = cfg.to_str().unwrap();

    // No route for this destination on the TG.
    let out = call(&[
        "--config",
        cfg,
        "sip:nobody@127.0.0.1",
        "--play",
        tone.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("error: call refused: 404 Not Found: no route for nobody"),
        "{err}"
    );
    assert!(text(&out.stdout).is_empty());

    // A play file in the wrong format is named with what it holds.
    let stereo = dir.join("stereo.wav");
    let mut b = riptide::client_tool::wav::encode(&[0; 320]);
    b[22..24].copy_from_slice(&2u16.to_le_bytes());
    std::fs::write(&stereo, b).unwrap();
    let out = call(&["--config", cfg, "echo", "--play", stereo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("stereo.wav") && err.contains("2 channel(s)"),
        "{err}"
    );

    // A peer that is not there.
    let out = call(&[
        "--config",
        cfg,
        "--peer",
        "nope",
        "echo",
        "--play",
        tone.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no [[ript_peer]] named \"nope\""));
    let _ = std::fs::remove_dir_all(&dir);
}
