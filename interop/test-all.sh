#!/usr/bin/env bash
# riptide's whole test suite: what CI runs (.ci/run calls exactly this).
#   1. formatting and lints (cargo fmt --check, clippy -D warnings)
#   2. unit and integration tests (cargo test --release: one build serves the tests and the
#      gateway pair), then each Criterion bench once
#   3. the SIPp suite against the gateway pair (interop/sipp/run.sh)
#   4. the browser checks: CORS, WebTransport origins and media tickets, and the SIP preflight
#      toward SIPp trunks, from headless Chromium against a gateway of their own
#      (interop/browser/run.sh)
#   5. the baresip run: one call per media mode (rtp sdes dtls ice-sdes ice-dtls) between two real
#      baresip UAs through the pair, after a self-test of its checker (interop/baresip/run.sh)
# Installs what it needs (sip-tester for SIPp, the tools the SIPp suite uses, dnsmasq for the SRV
# tests) when missing;
# the browser checks install their own (chromium, nodejs, npm, sip-tester; playwright-core with
# npm ci) and
# so does the baresip run (baresip-core, sox, tcpdump).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/common.sh"
cd "$REPO_ROOT"

need_cmd sipp sip-tester
need_cmd python3 python3
need_cmd curl curl
need_cmd ss iproute2
need_cmd openssl openssl   # tests/tls.rs: an independent TLS client
need_cmd dnsmasq dnsmasq-base   # SRV lookups: a real DNS server (src/sip/dns.rs, tests/trunk_dns.rs)
# The SIPp k-stir check verifies riptide's PASSporT with an independent implementation.
python3 -c 'import cryptography' 2>/dev/null || {
    log "installing the Python cryptography package (pip)"
    python3 -m pip install --quiet cryptography || die "pip install cryptography failed"
}

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --release --locked --all-targets -- -D warnings
# `cargo test --release` also builds target/release/riptide (the integration tests run it), and
# the pair uses that binary: a separate `cargo build --release` would compile the dependency
# tree a second time, because dev-dependencies change feature unification.
log "cargo test --release (also builds the release binary)"
cargo test --release --locked
# Each Criterion bench once (its test mode): a bench that panics or no longer runs shows here,
# not the next time someone measures.
log "benches, each once"
cargo test --release --locked --bench '*'
log "SIPp suite against the gateway pair"
"$INTEROP_DIR/sipp/run.sh"
log "browser checks: CORS, WebTransport and the SIP preflight from headless Chromium"
"$INTEROP_DIR/browser/run.sh"
log "baresip run: checker self-test, then one call per media mode through the gateway pair"
"$INTEROP_DIR/baresip/run.sh" --selftest-checker
"$INTEROP_DIR/baresip/run.sh"
