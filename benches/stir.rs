//! STIR/SHAKEN cost per call (`riptide::stir`): the authentication service signing one
//! PASSporT, and the verification service checking one Identity header with the `x5u`
//! certificate chain warm in the fetcher's cache and cold (fetched over HTTPS first). Each
//! iteration is one call. The PKI is a `TestPki` (STI-CA root, intermediate, P-256 SHAKEN leaf);
//! the time is injected (a fixed `NOW` for `iat`, chain validation and the fetcher's cache
//! clock). Fetches run on a current-thread tokio runtime driven by `block_on`.
//!
//! - `stir/sign`: `stir::verify::sign` with the leaf key — canonical JSON of header and claims,
//!   base64url, one ES256 signature, formatting the Identity header value.
//! - `stir/verify_warm`: one call with the chain cached: `Verifier::verify` on the Identity
//!   header (parse, JOSE header, `info` = `x5u`, `x5u` policy, claim shapes, freshness,
//!   orig/dest against the request, replay check; then parsing the leaf, chain validation to the
//!   root at `NOW`, the CRL step (no CRL loaded), leaf profile and claim constraints, the ES256
//!   signature, recording in the replay cache) with `chain_for` =
//!   `block_on(fetcher.fetch(x5u))` on an `X5uFetcher` whose entry for that URL is warm — so the
//!   cache lookup (URL policy check, mutex, map hit, `Arc` clone) is included. Every iteration
//!   has its own freshly signed PASSporT and Call-ID and records into one long-lived
//!   `ReplayCache::default()` (100 000 entries, 120 s), as a gateway's would; signing is in the
//!   untimed setup. The fetcher is checked afterwards to have fetched only once (the priming
//!   fetch before the line).
//! - `stir/verify_cold`: the same call with a new `X5uFetcher` per iteration (made in the untimed
//!   setup; its own rustls client config, so no TLS session resumption): the fetch spawns a
//!   task, resolves `repo.test` through the resolver hook to 127.0.0.1 (allow-listed), opens a
//!   TCP connection to a `CertRepo` on loopback, does a full TLS 1.3 handshake (the repository's
//!   self-signed certificate is the fetcher's only root), one HTTP/1.1 GET with `Connection:
//!   close`, reads and parses the PEM bundle, and caches it; then the verification as above. The
//!   repository runs on the same runtime thread, so its side of the TCP accept, handshake and
//!   response is in the figure too, and the figure is dominated by the TCP+TLS connect on
//!   loopback — a real repository adds network round trips on top. The verifier's policy allows
//!   the repository's ephemeral port besides 443 and 8443.
//! - `stir/parse_identity`: `IdentityHeader::parse` of the same header value alone, the floor.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use riptide::stir::fetch::{roots_from_der, FetchConfig, X5uFetcher};
use riptide::stir::repo::CertRepo;
use riptide::stir::verify::X5uPolicy;
use riptide::stir::{
    sign, Attestation, IdentityHeader, ReplayCache, ShakenClaims, SigningKey, TestPki, TrustStore,
    Verifier, VerifyContext, VerifyPolicy, Verstat,
};
use rustls::pki_types::PrivateKeyDer;
use std::collections::HashMap;
use std::fmt::Display;
use std::hint::black_box;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const NOW: u64 = 1_750_000_000;
const ORIG: &str = "12155551212";
const DEST: &str = "12155551213";
const REPO_HOST: &str = "repo.test";

fn ok<T, E: Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

fn claims(n: u64) -> ShakenClaims {
    ShakenClaims {
        attest: Attestation::A,
        dest_tns: vec![DEST.into()],
        iat: NOW,
        orig_tn: ORIG.into(),
        origid: format!("123e4567-e89b-12d3-a456-{n:012x}"),
    }
}

fn ctx(call_id: String) -> VerifyContext {
    VerifyContext {
        now_unix: NOW,
        canonical_orig: Some(ORIG.into()),
        canonical_dest: vec![DEST.into()],
        call_id,
    }
}

/// One call's input: a freshly signed Identity header value and a request with its own Call-ID.
fn call(key: &SigningKey, x5u: &str, n: &mut u64) -> (String, VerifyContext) {
    *n += 1;
    let id = ok(sign(&claims(*n), key, x5u), "sign");
    (id, ctx(format!("bench-{n}@riptide.test")))
}

/// Serves the PKI's chain at `/certs/sp.pem` from a `CertRepo` on 127.0.0.1; returns the port
/// and the fetcher configuration that reaches it.
fn start_repo(rt: &tokio::runtime::Runtime, pki: &TestPki) -> (u16, FetchConfig) {
    let ck = ok(
        rcgen::generate_simple_self_signed(vec![REPO_HOST.to_string()]),
        "repository certificate",
    );
    let id = riptide::tls::Identity {
        cert_chain: vec![ck.cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into()),
        fingerprint_sha256: String::new(),
    };
    let tls = ok(CertRepo::tls_config(&id), "repository TLS");
    let listener = ok(
        rt.block_on(CertRepo::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))),
        "bind",
    );
    let port = ok(listener.local_addr(), "local address").port();
    let pem = format!("{}{}", pki.leaf.pem, pki.intermediate.pem).into_bytes();
    let files = HashMap::from([("/certs/sp.pem".to_string(), pem)]);
    {
        let _guard = rt.enter();
        CertRepo::serve(listener, tls, files);
    }

    let roots = ok(roots_from_der(&[ck.cert.der().clone()]), "roots");
    let mut cfg = FetchConfig::new(roots);
    cfg.guard.allowed_hosts = vec![REPO_HOST.into()];
    cfg.guard.resolver = Some(Arc::new(|host: &str, port: u16| {
        if host == REPO_HOST {
            Ok(vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)])
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, "NXDOMAIN"))
        }
    }));
    cfg.clock = Arc::new(|| NOW);
    (port, cfg)
}

fn bench(c: &mut Criterion) {
    let rt = ok(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        "runtime",
    );
    let pki = ok(TestPki::generate("1234", NOW), "test PKI");
    let key = ok(pki.signing_key(), "leaf key");
    let (port, fetch_cfg) = start_repo(&rt, &pki);
    let x5u = format!("https://{REPO_HOST}:{port}/certs/sp.pem");

    let trust = ok(TrustStore::from_der_certs([&pki.root.der]), "trust store");
    let policy = VerifyPolicy {
        x5u: X5uPolicy {
            allowed_ports: vec![443, 8443, port],
            ..X5uPolicy::default()
        },
        ..VerifyPolicy::default()
    };
    let verifier = Verifier::new(trust, Vec::new(), policy);

    let warm = ok(X5uFetcher::new(fetch_cfg.clone()), "fetcher");
    ok(rt.block_on(warm.fetch(&x5u)), "priming fetch");

    let mut n = 0u64;
    let (sample_id, sample_ctx) = call(&key, &x5u, &mut n);
    let o = verifier.verify(
        &[&sample_id],
        &sample_ctx,
        &mut ReplayCache::default(),
        |u| rt.block_on(warm.fetch(u)),
    );
    assert_eq!(o.verstat, Verstat::TnValidationPassed, "{o:?}");

    let mut g = c.benchmark_group("stir");
    g.sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    let sign_claims = claims(0);
    g.bench_function("sign", |b| {
        b.iter(|| black_box(sign(black_box(&sign_claims), &key, &x5u)))
    });

    let mut replay = ReplayCache::default();
    g.bench_function("verify_warm", |b| {
        b.iter_batched(
            || call(&key, &x5u, &mut n),
            |(id, ctx)| {
                let o = verifier.verify(&[&id], &ctx, &mut replay, |u| rt.block_on(warm.fetch(u)));
                if o.verstat != Verstat::TnValidationPassed {
                    panic!("warm verification failed: {o:?}");
                }
                o
            },
            BatchSize::SmallInput,
        )
    });
    let started = warm.stats().fetches_started.load(Ordering::Relaxed);
    assert_eq!(
        started, 1,
        "the warm line made no fetch beyond the priming one"
    );

    g.sample_size(20)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(8));
    let mut replay = ReplayCache::default();
    g.bench_function("verify_cold", |b| {
        b.iter_batched(
            || {
                let fetcher = ok(X5uFetcher::new(fetch_cfg.clone()), "fetcher");
                (fetcher, call(&key, &x5u, &mut n))
            },
            |(fetcher, (id, ctx))| {
                let o =
                    verifier.verify(&[&id], &ctx, &mut replay, |u| rt.block_on(fetcher.fetch(u)));
                if o.verstat != Verstat::TnValidationPassed {
                    panic!("cold verification failed: {o:?}");
                }
                if fetcher.stats().fetches_started.load(Ordering::Relaxed) != 1 {
                    panic!("the cold line fetches once per call");
                }
                (o, fetcher)
            },
            BatchSize::SmallInput,
        )
    });

    g.sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    g.bench_function("parse_identity", |b| {
        b.iter(|| black_box(IdentityHeader::parse(black_box(&sample_id))))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
