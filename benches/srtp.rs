//! SRTP per-packet cost per SDES suite on a 172-byte G.711 RTP packet (12-byte header, 160-byte
//! payload). Each iteration handles 1000 packets (Criterion reports elements/s): protect on one
//! session; unprotect on a fresh receiving session (the replay window refuses repeats, so the
//! same 1000 packets need a new receiver each iteration).
//!
//! Lines, all in the same run:
//! - `copy_baseline`: moving each packet into a fresh buffer without crypto;
//! - `protect/<suite>`, `unprotect/<suite>`: the `BytesMut`-returning API of `SrtpSession`;
//! - `protect_into/<suite>`: `SrtpSession::protect_rtp_into` into one reused `Vec`;
//! - `unprotect_in_place/<suite>`: `SrtpSession::unprotect_rtp_in_place`, including the copy of
//!   each packet into one reused scratch buffer (the packet is decrypted where it lies);
//! - `rtc_srtp/{protect,unprotect}/AES_CM_128_HMAC_SHA1_80`: an rtc-srtp `Context` used
//!   directly, as `SrtpSession` did for every suite before its AES-CM path.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use riptide::media::srtp::{CryptoAttr, SrtpSession, Suite};
use rtc_srtp::context::Context;
use rtc_srtp::option::srtp_replay_protection;
use rtc_srtp::protection_profile::ProtectionProfile;
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

/// An rtc-srtp context for AES_CM_128_HMAC_SHA1_80 keyed with `attr`, with replay protection
/// when it receives (as `SrtpSession` set it up): `a` protects like `session(&a, &z)`, `z`
/// unprotects like it.
fn rtc_context(attr: &CryptoAttr, receive: bool) -> Context {
    let provider = match rtc_srtp::crypto::default_provider() {
        Ok(p) => p,
        Err(e) => panic!("crypto provider: {e}"),
    };
    let (k, s) = attr.key_salt.split_at(attr.suite.key_len());
    match Context::new(
        k,
        s,
        ProtectionProfile::Aes128CmHmacSha1_80,
        receive.then(|| srtp_replay_protection(128)),
        None,
        provider.crypto(),
    ) {
        Ok(c) => c,
        Err(e) => panic!("rtc-srtp context: {e}"),
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
        g.bench_function(format!("protect_into/{}", suite.name()), |b| {
            b.iter_batched_ref(
                || (session(&a, &z), Vec::with_capacity(1500)),
                |(tx, out)| {
                    for p in &packets {
                        let _ = black_box(tx.protect_rtp_into(black_box(p), None, out));
                        black_box(&out);
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
        g.bench_function(format!("unprotect_in_place/{}", suite.name()), |b| {
            b.iter_batched_ref(
                || (session(&a, &z), Vec::with_capacity(1500)),
                |(rx, scratch)| {
                    for p in &protected {
                        scratch.clear();
                        scratch.extend_from_slice(black_box(p));
                        match rx.unprotect_rtp_in_place(scratch) {
                            Ok(n) => {
                                black_box(&scratch[..n]);
                            }
                            Err(_) => panic!("a fresh receiver accepts every packet once"),
                        }
                    }
                },
                BatchSize::LargeInput,
            )
        });
        if suite == Suite::AesCm128HmacSha1_80 {
            g.bench_function(format!("rtc_srtp/protect/{}", suite.name()), |b| {
                b.iter_batched_ref(
                    || rtc_context(&a, false),
                    |tx| {
                        for p in &packets {
                            let _ = black_box(tx.encrypt_rtp(black_box(p)));
                        }
                    },
                    BatchSize::LargeInput,
                )
            });
            g.bench_function(format!("rtc_srtp/unprotect/{}", suite.name()), |b| {
                b.iter_batched_ref(
                    || rtc_context(&z, true),
                    |rx| {
                        for p in &protected {
                            if rx.decrypt_rtp(black_box(p)).is_err() {
                                panic!("a fresh receiver accepts every packet once");
                            }
                        }
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
