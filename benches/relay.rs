//! Media relay costs: the per-packet framing/parse path alone, and a full loopback
//! UDP → hub → QUIC datagram → hub → UDP hop between two hubs sharing one QUIC connection.
//!
//! Compare runs side by side (`cargo bench --bench relay -- --save-baseline x` then
//! `--baseline x`); absolute numbers depend on the machine.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use riptide::config::MediaConfig;
use riptide::media::leg::{LegacyLeg, Recv};
use riptide::media::rtp::{
    classify, parse_datagram, DatagramArena, PacketKind, PayloadMap, FLOW_RTP,
};
use riptide::media::{LegCrypto, MediaCmd, MediaHub};
use riptide::metrics::Metrics;
use riptide::CallKey;
use std::hint::black_box;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A 20 ms PCMU packet: 12-byte header + 160 bytes of payload.
fn pcmu_packet() -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 1, 0, 0, 0, 160, 0xde, 0xad, 0xbe, 0xef];
    p.resize(172, 0xd5);
    p
}

fn framing(c: &mut Criterion) {
    let pkt = pcmu_packet();
    let mut g = c.benchmark_group("framing");
    g.throughput(Throughput::Elements(1));
    g.bench_function("frame_parse_classify", |b| {
        let mut arena = DatagramArena::default();
        b.iter(|| {
            let d = arena
                .frame(black_box(1234), FLOW_RTP, black_box(&pkt))
                .unwrap_or_default();
            let h = parse_datagram(&d).map(|h| h.payload_offset).unwrap_or(0);
            black_box(classify(&d[h..]) == PacketKind::Rtp)
        })
    });
    g.bench_function("parse_classify", |b| {
        let mut arena = DatagramArena::default();
        let d = arena.frame(1234, FLOW_RTP, &pkt).unwrap_or_default();
        b.iter(|| {
            let h = parse_datagram(black_box(&d))
                .map(|h| h.payload_offset)
                .unwrap_or(0);
            black_box(classify(&d[h..]))
        })
    });
    g.finish();
}

fn new_hub() -> MediaHub {
    let cfg = MediaConfig {
        ip: "127.0.0.1".parse().unwrap(),
        port_min: 0,
        port_max: 0,
        latching: false,
        ..MediaConfig::default()
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::mem::forget(rx);
    MediaHub::new(&cfg, Arc::new(Metrics::default()), tx)
}

/// One-way UDP → QUIC → UDP latency per packet through two hubs on loopback. The hubs are
/// bound straight to a QUIC connection (QSID 0), without h3: this measures the relay, not
/// call setup.
fn loopback(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sip_a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sip_b = UdpSocket::bind("127.0.0.1:0").unwrap();
    sip_b
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let call = CallKey(1);
    let (a_side, _guard) = rt.block_on(async {
        let pair = riptide::media::loopback::quic_pair().await.unwrap();
        let (c_conn, s_conn) = (pair.client_conn.clone(), pair.server_conn.clone());

        let (a, b) = (new_hub(), new_hub());
        a.apply(MediaCmd::OpenLegacy { call, port: 0 });
        b.apply(MediaCmd::OpenLegacy { call, port: 0 });
        // A leg takes media only once the peer's SDP gave it an address (ADR 0032).
        a.apply(MediaCmd::SetRemote {
            call,
            rtp: sip_a.local_addr().unwrap(),
            rtcp: None,
            rtcp_mux: true,
            latching: false,
        });
        b.apply(MediaCmd::SetRemote {
            call,
            rtp: sip_b.local_addr().unwrap(),
            rtcp: None,
            rtcp_mux: true,
            latching: false,
        });
        a.bind_quic(call, c_conn.clone(), 0);
        b.bind_quic(call, s_conn.clone(), 0);
        tokio::spawn(a.clone().run_quic_reader(c_conn.clone()));
        tokio::spawn(b.clone().run_quic_reader(s_conn.clone()));
        (a.legacy_addr(call).unwrap(), (a, b, pair))
    });
    let pkt = pcmu_packet();
    let mut buf = [0u8; 2048];
    let (mut sent, mut lost) = (0u64, 0u64);
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    g.bench_function("udp_quic_udp_one_way", |b| {
        b.iter(|| {
            sip_a.send_to(&pkt, a_side).unwrap();
            sent += 1;
            // A lost datagram shows up as a 500 ms outlier rather than a hang ...
            let got = sip_b.recv_from(&mut buf).ok();
            lost += u64::from(got.is_none());
            black_box(got)
        })
    });
    g.finish();
    // ... and a relay that lost more than the odd one (or, run once as CI does, any) fails.
    assert!(
        lost * 100 <= sent,
        "{lost} of {sent} packets were not relayed"
    );
}

/// One plain leg's receive and send of a PCMU packet, as the relay calls them: with the
/// payload types as the HTTP/3 side numbers them (no table: the usual call), and with a peer
/// that numbers telephone-event its own way (ADR 0031; PCMU itself still passes unchanged,
/// so this is the table lookup alone).
fn leg(c: &mut Criterion) {
    let now = Instant::now();
    let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let pkt = pcmu_packet();
    let mut g = c.benchmark_group("leg");
    g.throughput(Throughput::Elements(1));
    for (name, map) in [
        ("recv_send_same_numbers", PayloadMap::default()),
        (
            "recv_send_renumbering_peer",
            PayloadMap {
                to_peer: vec![(101, 100)],
                from_peer: vec![(100, 101)],
                refused: vec![13],
            },
        ),
    ] {
        let mut leg = LegacyLeg::new(false, now, SystemTime::now());
        leg.set_remote(peer, None, false, true);
        leg.secure(now, LegCrypto::Plain, None, None);
        leg.map_payload_types(&map);
        let mut rx = pkt.clone();
        let mut out = Vec::with_capacity(256);
        g.bench_function(name, |b| {
            b.iter(|| {
                rx.copy_from_slice(&pkt);
                let got = matches!(leg.on_recv(now, peer, black_box(&mut rx)), Recv::Rtp(_));
                let sent = leg.on_send(now, black_box(&pkt), &mut out).is_ok();
                black_box((got, sent))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, framing, leg, loopback);
criterion_main!(benches);
