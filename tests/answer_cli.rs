//! `riptide answer` against a real `riptide serve` whose SIP side routes every call to the
//! handlers of TG `web` (protocol.md §2.7), with SIPp as the SIP caller: the tool registers,
//! takes the call, records the 440 Hz tone SIPp plays and sees SIPp hang up.

mod cli_support;

use cli_support::{
    assert_tone, client_config, field, free_port, start_server, temp_dir, text, tone, tone_wav,
    Gateway, Killed, BIN,
};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// TG `web` has no routes of its own: SIP calls reach it through `[[sip_route]] handlers`.
const WEB_TG: &str = r#"[[tg]]
name = "web"

[[sip_route]]
prefix = ""
handlers = "web"
"#;

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("interop/sipp/scenarios")
        .join(name)
}

/// A UDP port `p` with `p..p+4` free (SIPp's media and its RTCP/video neighbours).
fn free_media_port() -> u16 {
    loop {
        let p = 40000 + (rand::random::<u16>() % 5000) * 4; // up to 59999
        if (p..p + 4).all(|q| std::net::UdpSocket::bind(("127.0.0.1", q)).is_ok()) {
            return p;
        }
    }
}

/// One SIPp UAC call to `gw` with `scenario`, run in `dir` (traces go there); `extra` adds
/// arguments such as `-d`.
fn sipp(dir: &Path, gw: SocketAddr, scenario_file: &str, extra: &[&str]) -> Output {
    let (sip, control, media) = (free_port(), free_port(), free_media_port());
    let mut args: Vec<String> = vec![
        gw.to_string(),
        "-sf".into(),
        scenario(scenario_file).to_string_lossy().into_owned(),
        "-s".into(),
        "web".into(),
        "-i".into(),
        "127.0.0.1".into(),
        "-mi".into(),
        "127.0.0.1".into(),
        "-p".into(),
        sip.to_string(),
        "-cp".into(),
        control.to_string(),
        "-mp".into(),
        media.to_string(),
        "-m".into(),
        "1".into(),
        "-l".into(),
        "1".into(),
        "-nostdin".into(),
        "-trace_err".into(),
        "-trace_msg".into(),
        "-timeout".into(),
        "30s".into(),
        "-timeout_error".into(),
        "-recv_timeout".into(),
        "15s".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    std::fs::create_dir_all(dir).unwrap();
    Command::new("sipp")
        .args(&args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("sipp runs (apt package sip-tester)")
}

/// SIPp's message trace, for failure messages.
fn sipp_trace(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with("_messages.log") || name.ends_with("_errors.log") {
            out.push_str(&format!("--- {name}\n"));
            out.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    out
}

/// A running `riptide answer` whose stdout lines arrive on a channel.
struct Answer {
    child: Killed,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: PathBuf,
}

impl Answer {
    /// Starts `riptide answer args`; its stderr goes to `dir/answer-{tag}.stderr`.
    fn start(dir: &Path, tag: &str, args: &[&str]) -> Answer {
        let stderr = dir.join(format!("answer-{tag}.stderr"));
        let mut child = Command::new(BIN)
            .arg("answer")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("riptide answer runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Answer {
            child: Killed(child),
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for a stdout line starting with `prefix`.
    fn wait_line(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no {prefix:?} line from riptide answer within {within:?}; stdout:\n{}\nstderr:\n{}",
                    self.seen.join("\n"),
                    self.stderr()
                ),
            }
        }
    }

    /// Waits for the process to exit: its status code and everything it printed on stdout
    /// (then its stderr, when the code is not 0).
    fn finish(mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(s) = self.child.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "riptide answer still running; stdout:\n{}\nstderr:\n{}",
                self.seen.join("\n"),
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        let mut out = self.seen.join("\n");
        if status.code() != Some(0) {
            out.push_str(&format!("\nstderr:\n{}", self.stderr()));
        }
        (status.code(), out)
    }
}

/// Starts `riptide answer args` (stderr in `dir/answer-{tag}.stderr`), waits until it
/// registered, has SIPp place one call with `scenario_file` and `extra` (working directory
/// `dir/sipp-{tag}`, made ready by `prepare`), and waits for the tool to exit 0. Returns its
/// `registered` line and the rest of its stdout (the summary).
fn answer_one_sipp_call(
    dir: &Path,
    gw: &Gateway,
    tag: &str,
    args: &[&str],
    scenario_file: &str,
    extra: &[&str],
    prepare: impl FnOnce(&Path),
) -> (String, String) {
    let mut answer = Answer::start(dir, tag, args);
    let registered = answer.wait_line("registered ", Duration::from_secs(20));
    let sipp_dir = dir.join(format!("sipp-{tag}"));
    std::fs::create_dir_all(&sipp_dir).unwrap();
    prepare(&sipp_dir);
    let out = sipp(&sipp_dir, gw.sip, scenario_file, extra);
    assert_eq!(
        out.status.code(),
        Some(0),
        "sipp: {}\n{}\n{}\nriptide answer stderr:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        sipp_trace(&sipp_dir),
        answer.stderr()
    );
    let (code, stdout) = answer.finish(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{stdout}");
    let summary = stdout.replacen(&registered, "", 1);
    // Shown with --nocapture: what an interop tester sees at the end of a call.
    println!("riptide answer summary:\n{summary}");
    (registered, summary)
}

#[test]
fn a_sip_call_to_the_handlers_is_answered_and_recorded() {
    let dir = temp_dir("answer-tone");
    let gw = start_server(&dir, WEB_TG);
    let cfg = client_config(&dir, &gw, "web", &["handlers:write", "calls:write"]);
    let rec = dir.join("out.wav");
    let args = [
        "--config",
        cfg.to_str().unwrap(),
        "--handler-id",
        "answer-test",
        "--record",
        rec.to_str().unwrap(),
    ];
    // SIPp's rtp_stream sends raw µ-law from its working directory, for -d ms, then BYEs.
    let write_tone = |sipp_dir: &Path| {
        let ulaw: Vec<u8> = tone(440.0, 2.0)
            .into_iter()
            .map(riptide::client_tool::g711::encode)
            .collect();
        std::fs::write(sipp_dir.join("tone-440hz.ulaw"), ulaw).unwrap();
    };
    let (registered, summary) = answer_one_sipp_call(
        &dir,
        &gw,
        "tone",
        &args,
        "rtp_uac.xml",
        &["-d", "2000"],
        write_tone,
    );
    assert!(
        registered.ends_with("/.well-known/ript/v1/providertgs/web/handlers/answer-test"),
        "{registered}"
    );
    assert!(
        summary.contains("destination:      web via gw"),
        "{summary}"
    );
    assert!(summary.contains("caller:           "), "{summary}");
    assert!(summary.contains("reached:          answered"), "{summary}");
    assert!(
        summary.contains("end:              ended by the caller ("),
        "{summary}"
    );
    assert!(field(&summary, "setup time") < 5000.0, "{summary}");
    // 2 s at 20 ms from SIPp: allow for the packets sent before the media stream was bound.
    assert!(field(&summary, "packets received") > 60.0, "{summary}");
    assert!(field(&summary, "packets sent") > 60.0, "{summary}");
    assert_tone(&rec, 440.0, 60 * 160);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_declining_handler_refuses_and_a_timed_one_hangs_up() {
    let dir = temp_dir("answer-decline");
    let gw = start_server(&dir, WEB_TG);
    let cfg = client_config(&dir, &gw, "web", &["handlers:write", "calls:write"]);
    let cfg = cfg.to_str().unwrap();

    let args = ["--config", cfg, "--decline"];
    let (_, summary) =
        answer_one_sipp_call(&dir, &gw, "decline", &args, "declined_uac.xml", &[], |_| {});
    assert!(summary.contains("reached:          declined"), "{summary}");
    assert!(
        summary.contains("end:              declined by us (603)"),
        "{summary}"
    );

    // The declining tool's handler is still registered but unreachable now: only this one rings.
    let tone = dir.join("tone.wav");
    tone_wav(&tone, 440.0, 0.5);
    let rec = dir.join("hangup.wav");
    let args = [
        "--config",
        cfg,
        "--record",
        rec.to_str().unwrap(),
        "--play",
        tone.to_str().unwrap(),
        "--duration",
        "1",
    ];
    let (_, summary) =
        answer_one_sipp_call(&dir, &gw, "hangup", &args, "calleebye_uac.xml", &[], |_| {});
    assert!(summary.contains("reached:          answered"), "{summary}");
    assert!(
        summary.contains("end:              ended by us (Q.850;cause=16"),
        "{summary}"
    );
    let sent = field(&summary, "packets sent");
    assert!((40.0..=60.0).contains(&sent), "{summary}");
    // SIPp sends no media in this scenario; the (empty) recording is still written.
    assert!(rec.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sip_call_with_no_handler_registered_gets_480() {
    let dir = temp_dir("answer-none");
    let gw = start_server(&dir, WEB_TG);
    let out = sipp(&dir, gw.sip, "unavailable_uac.xml", &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "sipp: {}\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr),
        sipp_trace(&dir)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_answer_options_are_usage_errors() {
    let dir = temp_dir("answer-usage");
    let cfg = dir.join("client.toml");
    std::fs::write(
        &cfg,
        "[[ript_peer]]\nname = \"gw\"\nurl = \"https://127.0.0.1:1\"\ntg = \"web\"\ntoken = \"x\"\n\
         pin_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("answer")
            .args(args)
            .output()
            .expect("riptide answer runs")
    };
    let cfg = cfg.to_str().unwrap();
    // --record is required unless declining.
    let out = run(&["--config", cfg]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--record"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["--config", cfg, "--record", "x.wav", "--handler-id", "a/b"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--handler-id"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["--config", cfg, "--record", "x.wav", "--peer", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no [[ript_peer]] named \"nope\""));
    let out = run(&["--config", cfg, "--record", "x.wav", "--calls", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}
