//! Malformed SIP: every fixture in `fixtures/sip/` gets the answer the table below says, and
//! tens of thousands of seeded random mutations of a valid INVITE go through the parser and the
//! engine without a panic and without leaving calls behind.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use riptide::bridge::engine::{Engine, EngineConfig, Input, Output, SipInbound};
use riptide::metrics::Metrics;
use riptide::sip::msg::{self, Transport};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn engine() -> Engine {
    Engine::new(EngineConfig::example(), Arc::new(Metrics::default()))
}

/// What the gateway answers to one datagram: the status of its first SIP output, or `None`.
fn answer(e: &mut Engine, now: Instant, bytes: &[u8]) -> Option<u16> {
    let src = "127.0.0.1:5061".parse().unwrap();
    match msg::parse(bytes) {
        Err(bad) => bad.reply.and_then(|r| status_of(&r)),
        Ok((m, info)) => {
            e.handle_input(
                now,
                Input::Sip(Box::new(SipInbound {
                    msg: m,
                    info,
                    src,
                    transport: Transport::Udp,
                    conn: None,
                    peer_cert_sha256: None,
                })),
            );
            let mut first = None;
            while let Some(o) = e.poll_output() {
                if let (None, Output::Sip(s)) = (first, &o) {
                    first = status_of(&s.bytes);
                }
            }
            first
        }
    }
}

fn status_of(b: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(b).ok()?;
    s.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

#[test]
fn fixtures_get_the_expected_answer() {
    // Each malformed request gets a 4xx/5xx it can be matched with, or (when it cannot be
    // addressed) nothing; the 100 Trying of an INVITE that parses comes first, then the error.
    let table: &[(&str, Option<u16>)] = &[
        ("cseq-overflow.sip", Some(400)),
        ("no-via.sip", None),
        ("bad-sdp.sip", Some(100)),
        ("bad-max-forwards.sip", Some(400)),
        ("sdp-port-out-of-range.sip", Some(100)),
        ("unknown-method.sip", Some(501)),
        ("via-without-branch.sip", Some(400)),
        ("binary-garbage.sip", None),
        ("stray-response.sip", None),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sip");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("sip") {
            continue;
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let expected = table
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} has no expectation in the table"))
            .1;
        let mut e = engine();
        let got = answer(&mut e, Instant::now(), &std::fs::read(&path).unwrap());
        assert_eq!(got, expected, "{name}");
        assert_eq!(e.active_calls(), 0, "{name} created no call");
        seen += 1;
    }
    assert_eq!(seen, table.len(), "every expectation has its fixture");
}

#[test]
fn bad_sdp_gets_400_after_the_100() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sip");
    for name in ["bad-sdp.sip", "sdp-port-out-of-range.sip"] {
        let mut e = engine();
        let src = "127.0.0.1:5061".parse().unwrap();
        let (m, info) = msg::parse(&std::fs::read(dir.join(name)).unwrap()).unwrap();
        e.handle_input(
            Instant::now(),
            Input::Sip(Box::new(SipInbound {
                msg: m,
                info,
                src,
                transport: Transport::Udp,
                conn: None,
                peer_cert_sha256: None,
            })),
        );
        let statuses: Vec<u16> = std::iter::from_fn(|| e.poll_output())
            .filter_map(|o| match o {
                Output::Sip(s) => status_of(&s.bytes),
                _ => None,
            })
            .collect();
        assert_eq!(statuses, vec![100, 400], "{name}");
    }
}

const INVITE: &str = "INVITE sip:answer@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKfz;rport\r\nMax-Forwards: 70\r\nFrom: \"A\" <sip:+12155551212@127.0.0.1>;tag=f1\r\nTo: <sip:answer@127.0.0.1:5070>\r\nCall-ID: fuzz@x\r\nCSeq: 1 INVITE\r\nContact: <sip:a@127.0.0.1:5061>\r\nRecord-Route: <sip:127.0.0.1:5099;lr>\r\nContent-Type: application/sdp\r\nContent-Length: 152\r\n\r\nv=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=rtcp-mux\r\na=sendonly\r\n";

#[test]
fn random_mutations_never_panic_and_leave_no_call_behind() {
    assert!(
        msg::parse(INVITE.as_bytes()).is_ok(),
        "the seed INVITE is valid"
    );
    let mut rng = StdRng::seed_from_u64(0x0517_21de);
    let mut e = engine();
    let start = Instant::now();
    let mut now = start;
    let mut parsed = 0;
    for i in 0..20_000u32 {
        let mut m = INVITE.as_bytes().to_vec();
        for _ in 0..rng.random_range(1..=4) {
            let len = m.len().max(1);
            match rng.random_range(0..6) {
                0 => {
                    let p = rng.random_range(0..len.min(m.len()).max(1));
                    if p < m.len() {
                        m[p] = rng.random();
                    }
                }
                1 => {
                    let a = rng.random_range(0..len);
                    let b = (a + rng.random_range(0..40)).min(m.len());
                    if a < b {
                        m.drain(a..b);
                    }
                }
                2 => {
                    let p = rng.random_range(0..=m.len());
                    let junk: Vec<u8> = (0..rng.random_range(1..12))
                        .map(|_| {
                            *b":;,<>\"\r\n =@0123456789z"
                                .get(rng.random_range(0..25))
                                .unwrap_or(&b'x')
                        })
                        .collect();
                    m.splice(p..p, junk);
                }
                3 => m.truncate(rng.random_range(0..=m.len())),
                4 => {
                    // Vary the identifiers so that mutants make distinct calls and dialogs.
                    let s =
                        String::from_utf8_lossy(&m).replace("fuzz@x", &format!("fuzz{}@x", i % 64));
                    m = s.into_bytes();
                }
                _ => {
                    let s = String::from_utf8_lossy(&m)
                        .replace(
                            "INVITE sip:",
                            ["BYE sip:", "CANCEL sip:", "ACK sip:", "UPDATE sip:"][i as usize % 4],
                        )
                        .replace(
                            "To: <sip:answer@127.0.0.1:5070>",
                            "To: <sip:answer@127.0.0.1:5070>;tag=t1",
                        );
                    m = s.into_bytes();
                }
            }
        }
        if msg::parse(&m).is_ok() {
            parsed += 1;
        }
        let _ = answer(&mut e, now, &m);
        if i % 50 == 0 {
            now += Duration::from_millis(700);
            e.handle_timeout(now);
            while e.poll_output().is_some() {}
        }
    }
    assert!(
        parsed > 1000,
        "the mutations exercise the engine too ({parsed} parsed)"
    );
    // Nothing answers the calls that were created: every one of them must time out.
    for _ in 0..400 {
        now += Duration::from_secs(1);
        e.handle_timeout(now);
        while e.poll_output().is_some() {}
    }
    assert_eq!(e.active_calls(), 0, "every call ended by its timers");
}
