//! The STUN connectivity-check path of the legacy leg's ICE agent (`riptide::media::ice`), per
//! Binding request. The request is a real check: the first one a full controlling `IceAgent`
//! emits toward a lite one (USERNAME, PRIORITY, ICE-CONTROLLING, MESSAGE-INTEGRITY, FINGERPRINT;
//! 96 bytes).
//!
//! - `lite_check_to_response`: what the gateway spends per check it answers in lite mode —
//!   `IceAgent::handle_stun` (framing checks, rtc-stun decode, FINGERPRINT CRC, USERNAME,
//!   HMAC-SHA1 verification, role and attribute checks, pair bookkeeping) plus building the
//!   success response (XOR-MAPPED-ADDRESS, HMAC-SHA1, CRC) and taking it from `poll_transmit`.
//! - `parse_only`: the baseline in the same run: rtc-stun's `Message::unmarshal_binary` of the
//!   same packet (copy and attribute split, no CRC, no HMAC, no response).
//! - `demux_is_stun`: the RFC 7983 test every datagram on the socket goes through.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use riptide::media::ice::{is_stun, IceAgent, IceCredentials, IceMode};
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

fn addr(s: &str) -> SocketAddr {
    match s.parse() {
        Ok(a) => a,
        Err(e) => panic!("address {s}: {e}"),
    }
}

fn bench(c: &mut Criterion) {
    let now = Instant::now();
    let (gw, peer) = (addr("192.0.2.1:20000"), addr("198.51.100.7:40000"));
    let (gw_creds, peer_creds) = (IceCredentials::generate(), IceCredentials::generate());
    let mut full = IceAgent::new(
        IceMode::Full { controlling: true },
        peer_creds.clone(),
        gw_creds.clone(),
        vec![gw],
        now,
    );
    let Some((to, request)) = full.poll_transmit() else {
        panic!("a full agent sends a check at once");
    };
    assert_eq!(to, gw);
    let mut lite = IceAgent::new(IceMode::Lite, gw_creds, peer_creds, vec![peer], now);
    if let Err(e) = lite.handle_stun(now, peer, &request) {
        panic!("the check is valid: {e}");
    }
    assert!(lite.poll_transmit().is_some());

    let mut g = c.benchmark_group("stun");
    g.throughput(Throughput::Elements(1));
    g.bench_function("lite_check_to_response", |b| {
        b.iter(|| {
            if lite.handle_stun(now, peer, black_box(&request)).is_err() {
                panic!("the same check is answered every time");
            }
            black_box(lite.poll_transmit())
        })
    });
    g.bench_function("parse_only", |b| {
        b.iter(|| {
            let mut m = rtc_stun::message::Message::new();
            black_box(m.unmarshal_binary(black_box(&request)).is_ok());
            black_box(m)
        })
    });
    g.bench_function("demux_is_stun", |b| {
        b.iter(|| black_box(is_stun(black_box(&request))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
