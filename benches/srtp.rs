//! SRTP per-packet cost per SDES suite on a 172-byte G.711 RTP packet (12-byte header, 160-byte
//! payload). Each iteration handles 1000 packets (Criterion reports elements/s): protect on one
//! session; unprotect on a fresh receiving session (the replay window refuses repeats, so the
//! same 1000 packets need a new receiver each iteration). The `copy` line is the baseline in
//! the same run: moving each packet into a fresh buffer without crypto.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use riptide::media::srtp::{CryptoAttr, SrtpSession, Suite};
use std::hint::black_box;

const N: usize = 1000;

fn rtp(seq: u16) -> Vec<u8> {
    riptide::media::rtp::pcmu_packet(seq, 0x1234_5678)
}

fn key(suite: Suite, byte: u8) -> CryptoAttr {
    match CryptoAttr::generate(1, suite, |b| {
        b.fill(byte);
        Ok(())
    }) {
        Ok(k) => k,
        Err(e) => panic!("key for {suite:?}: {e}"),
    }
}

fn session(local: &CryptoAttr, remote: &CryptoAttr) -> SrtpSession {
    match SrtpSession::new(local, remote) {
        Ok(s) => s,
        Err(e) => panic!("session: {e}"),
    }
}

fn bench(c: &mut Criterion) {
    let packets: Vec<Vec<u8>> = (0..N as u16).map(rtp).collect();
    let mut g = c.benchmark_group("srtp");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("copy_baseline", |b| {
        b.iter(|| {
            for p in &packets {
                black_box(bytes::BytesMut::from(black_box(&p[..])));
            }
        })
    });
    for suite in Suite::ALL {
        let (a, z) = (key(suite, 1), key(suite, 2));
        g.bench_function(format!("protect/{}", suite.name()), |b| {
            b.iter_batched_ref(
                || session(&a, &z),
                |tx| {
                    for p in &packets {
                        let _ = black_box(tx.protect_rtp(black_box(p)));
                    }
                },
                BatchSize::LargeInput,
            )
        });
        let mut sender = session(&z, &a);
        let protected: Vec<Vec<u8>> = packets
            .iter()
            .filter_map(|p| sender.protect_rtp(p).ok().map(|b| b.to_vec()))
            .collect();
        assert_eq!(protected.len(), N, "{suite:?}: every packet protects");
        g.bench_function(format!("unprotect/{}", suite.name()), |b| {
            b.iter_batched_ref(
                || session(&a, &z),
                |rx| {
                    for p in &protected {
                        if rx.unprotect_rtp(black_box(p)).is_err() {
                            panic!("a fresh receiver accepts every packet once");
                        }
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
