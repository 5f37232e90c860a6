//! `riptide call` against a real `riptide serve`: the call goes over HTTP/3 to the built-in
//! echo service, a 440 Hz tone is played and must come back in the recording.

mod cli_support;

use cli_support::{assert_tone, client_config, field, start_server, temp_dir, text, tone_wav, BIN};
use std::path::Path;
use std::process::{Command, Output};

/// The gateway's TG `local` routes `echo` to the echo service.
const ECHO_TG: &str = r#"[[tg]]
name = "local"

  [[tg.route]]
  prefix = "echo"
  echo = true
"#;

/// Starts the gateway with [`ECHO_TG`] and writes a client configuration for it.
fn echo_setup(dir: &Path) -> (cli_support::Gateway, std::path::PathBuf) {
    let gw = start_server(dir, ECHO_TG);
    let cfg = client_config(dir, &gw, "local", &[]);
    (gw, cfg)
}

fn call(args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("call")
        .args(args)
        .output()
        .expect("riptide call runs")
}

#[test]
fn call_to_the_echo_service_returns_the_tone() {
    let dir = temp_dir("call-echo");
    let (_gw, cfg) = echo_setup(&dir);
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

    assert_tone(&rec, 440.0, 100 * 160);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refusals_and_bad_input_exit_non_zero_with_a_reason() {
    let dir = temp_dir("call-refused");
    let (_gw, cfg) = echo_setup(&dir);
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
