#!/usr/bin/env bash
# Browser checks for riptide: CORS-04 and WT-01 in headless Chromium (see cors_wt.mjs), then an
# end-to-end call from the dial pad web/demo.html to a SIP peer (see call_e2e.mjs), then calls
# from a SIP phone to the same page, served by riptide's admin listener and registered as a
# handler (see incoming_e2e.mjs), and an opus call (WebCodecs) from the dial pad to the echo
# service (see opus_e2e.mjs).
#
#   interop/browser/run.sh
#
# Starts one riptide gateway of its own (HTTP/3 on 127.0.0.1:4496, allowing the browser
# origins https://allowed.example and (for the page it serves itself) its admin listener's only,
# with the built-in echo service behind TG "local" and two
# SIP trunks with `preflight = true`, each a SIPp UAS of its own: "noacao" answers the SIP CORS
# preflight without Access-Control-Allow-Origin, "acao" allows the origin and refuses the INVITE
# with 486; scenarios in scenarios/; and a third, "tone", without preflight, for the call from
# web/demo.html: a SIPp UAS that answers PCMU and sends a 440 Hz tone), mints a token, runs Debian's chromium through
# playwright-core (npm, pinned by package-lock.json; no browser is downloaded) against it, and
# stops it again.
# Prints one PASS/FAIL line per check and ends with `browser: N passed, M failed`; exit status 1
# on any failure. Screenshots, Chromium's net log, the gateway log and the SIPp logs:
# interop/out/browser/.
# Installs chromium, nodejs, npm and sip-tester with apt when missing. RIPTIDE_BIN overrides the
# binary (no cargo build then); H3_PORT, SIP_PORT, ADMIN_PORT and MEDIA_PORT_MIN move the
# gateway, NOACAO_PORT, ACAO_PORT and TONE_PORT the three SIPp trunks, CALLER_PORT the SIPp phone
# of the incoming calls.
# The call: Chromium's fake microphone plays a 440 Hz WAV (sox); tcpdump on lo records what the
# gateway sends the "tone" UAS, and tone_check.py finds the tone (Goertzel) and the page's
# DTMF 5 (RFC 4733) in it. Screenshots call-1-idle.png, call-2-in-call.png, call-3-ended.png.
# The opus call: the same page with `codecs=opus,PCMU,PCMA` calls "echo" on TG "local" (the
# built-in echo service) with the same 440 Hz microphone and finds the tone in the echoed opus it
# decodes; then once more with the default codecs (PCMU). Screenshot opus-1-in-call.png.
# The incoming calls: the gateway also serves TG "web", whose handlers `[[sip_route]] prefix =
# "page"` rings, and allows the admin listener's origin (the page's, http://127.0.0.1:ADMIN_PORT).
# The page's fake microphone plays 660 Hz; a SIPp phone (scenarios/page_*_uac.xml, started by
# incoming_e2e.mjs) calls sip:page@127.0.0.1:SIP_PORT and sends 440 Hz; tcpdump records what
# the gateway sends the phone, and tone_check.py finds the page's 660 Hz in it. Screenshots
# incoming-1-registered.png, incoming-2-in-call.png, incoming-3-ended.png, incoming-4-ringing.png.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/..
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib/common.sh"

HERE="$INTEROP_DIR/browser"
OUT="$OUT_DIR/browser"
BIN="${RIPTIDE_BIN:-$REPO_ROOT/target/release/riptide}"
H3_PORT="${H3_PORT:-4496}"
SIP_PORT="${SIP_PORT:-5196}"
ADMIN_PORT="${ADMIN_PORT:-9196}"
MEDIA_PORT_MIN="${MEDIA_PORT_MIN:-38000}"
NOACAO_PORT="${NOACAO_PORT:-5197}"
ACAO_PORT="${ACAO_PORT:-5198}"
TONE_PORT="${TONE_PORT:-5199}"
TONE_MEDIA=$((MEDIA_PORT_MIN + 240))
CALLER_PORT="${CALLER_PORT:-5195}"
CALLER_MEDIA=$((MEDIA_PORT_MIN + 260))

need_cmd chromium chromium
need_cmd node nodejs
need_cmd npm npm
need_cmd openssl openssl
need_cmd curl curl
need_cmd ss iproute2
need_cmd sipp sip-tester
need_cmd timeout coreutils
need_cmd sox sox
need_cmd tcpdump tcpdump
need_cmd python3 python3
# playwright-core 1.65 needs Node 20 or later (Debian 12's own nodejs package is 18).
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || die "Node $(node --version) is too old for playwright-core: Node 20 or later is needed"

# The binary the rest of the suite uses; rebuilt when the sources are newer (as pair.sh does).
# web/ counts: the admin listener serves the page built into the binary.
if [ -z "${RIPTIDE_BIN:-}" ]; then
    if [ ! -x "$BIN" ] || [ -n "$(find "$REPO_ROOT/src" "$REPO_ROOT/web" "$REPO_ROOT/Cargo.toml" "$REPO_ROOT/Cargo.lock" -newer "$BIN" -print -quit 2>/dev/null)" ]; then
        need_cmd cargo cargo
        log "building the release binary"
        mkdir -p "$OUT_DIR"
        (cd "$REPO_ROOT" && cargo build --release --locked) >"$OUT_DIR/browser-build.log" 2>&1 || {
            tail -n 40 "$OUT_DIR/browser-build.log" >&2
            die "cargo build --release --locked failed (full log: $OUT_DIR/browser-build.log)"
        }
    fi
fi
[ -x "$BIN" ] || die "no riptide binary at $BIN"

for spec in "udp:$H3_PORT" "udp:$SIP_PORT" "tcp:$SIP_PORT" "tcp:$ADMIN_PORT" \
    "udp:$NOACAO_PORT" "udp:$ACAO_PORT" "udp:$TONE_PORT" "udp:$TONE_MEDIA" \
    "udp:$CALLER_PORT" "udp:$CALLER_MEDIA"; do
    ! port_bound "${spec%%:*}" "${spec##*:}" \
        || die "port ${spec/:/\/} is in use: $(port_users "${spec%%:*}" "${spec##*:}")"
done

rm -rf "$OUT"
mkdir -p "$OUT"

log "npm ci (playwright-core)"
(cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error) >"$OUT/npm.log" 2>&1 || {
    cat "$OUT/npm.log" >&2
    die "npm ci failed in $HERE"
}

cat >"$OUT/riptide.toml" <<EOF
# Written by interop/browser/run.sh: one gateway for the browser checks.
[general]
node_name = "browser"
data_dir = "$OUT/data"
log_level = "info,riptide::ript=debug"

[sip]
udp = ["127.0.0.1:$SIP_PORT"]
tcp = ["127.0.0.1:$SIP_PORT"]

[http3]
listen = "127.0.0.1:$H3_PORT"
# Call URIs name the address Chromium is forced onto QUIC for.
server_name = "127.0.0.1"
# The checks' pages, and the demo page as riptide's admin listener serves it (incoming_e2e.mjs).
cors_origins = ["https://allowed.example", "http://127.0.0.1:$ADMIN_PORT"]

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[media]
ip = "127.0.0.1"
port_min = $MEDIA_PORT_MIN
port_max = $((MEDIA_PORT_MIN + 99))

[[tg]]
name = "local"
description = "the built-in echo service"

  [[tg.route]]
  prefix = "echo"
  echo = true

  # Browser calls toward trunks that want a SIP CORS preflight first (docs/protocol.md §8.4).
  [[tg.route]]
  prefix = "noacao"
  sip_trunk = "noacao"

  [[tg.route]]
  prefix = "acao"
  sip_trunk = "acao"

  # The dial pad's call (call_e2e.mjs).
  [[tg.route]]
  prefix = "+1555"
  sip_trunk = "tone"

# Where the page registers its handler (incoming_e2e.mjs); SIP calls to "page…" ring it.
[[tg]]
name = "web"
description = "browser pages that take calls"

# SIPp UAS: 200 to the preflight without Access-Control-Allow-Origin; must never be INVITEd.
[[sip_trunk]]
name = "noacao"
target = "sip:127.0.0.1:$NOACAO_PORT;transport=udp"
preflight = true

# SIPp UAS: 200 with Access-Control-Allow-Origin: https://allowed.example, then 486 to the INVITE.
[[sip_trunk]]
name = "acao"
target = "sip:127.0.0.1:$ACAO_PORT;transport=udp"
preflight = true

# SIPp UAS: answers PCMU (and telephone-event 101) and sends a 440 Hz tone until the BYE.
[[sip_trunk]]
name = "tone"
target = "sip:127.0.0.1:$TONE_PORT;transport=udp"

[[sip_route]]
prefix = "page"
handlers = "web"

[[sip_route]]
prefix = ""
ript_peer = "self"
EOF

TOKEN="$("$BIN" token mint --config "$OUT/riptide.toml" --subject browser-check --ttl-secs 600 2>"$OUT/token-mint.log")" \
    || die "riptide token mint failed: $(cat "$OUT/token-mint.log")"

RIPTIDE_PID=""
NOACAO_PID=""
ACAO_PID=""
TONE_PID=""
cleanup() {
    stop_capture
    [ -z "$TONE_PID" ] || stop_pid "$TONE_PID" 2
    [ -z "$NOACAO_PID" ] || stop_pid "$NOACAO_PID" 2
    [ -z "$ACAO_PID" ] || stop_pid "$ACAO_PID" 2
    [ -z "$RIPTIDE_PID" ] || stop_pid "$RIPTIDE_PID" 5
}
trap cleanup EXIT

# start_trunk NAME PORT MEDIA_PORT CONTROL_PORT [SCENARIO]: a SIPp UAS for one call (no -aa: the
# scenario itself must answer the OPTIONS), its logs in $OUT/sipp-NAME/; sets TRUNK_PID.
start_trunk() {
    local name="$1" port="$2" dir="$OUT/sipp-$1" scenario="${5:-preflight_$1_uas.xml}"
    mkdir -p "$dir"
    (cd "$dir" && exec timeout -k 5 150 sipp -sf "$HERE/scenarios/$scenario" \
        -i 127.0.0.1 -p "$port" -mi 127.0.0.1 -mp "$3" -cp "$4" -m 1 -nostdin \
        -trace_msg -message_file "$dir/messages.log" -trace_err -error_file "$dir/errors.log" \
        -timeout 90s -timeout_error) >"$dir/stdout" 2>&1 &
    TRUNK_PID=$!
}
start_trunk noacao "$NOACAO_PORT" $((MEDIA_PORT_MIN + 200)) $((MEDIA_PORT_MIN + 210))
NOACAO_PID=$TRUNK_PID
start_trunk acao "$ACAO_PORT" $((MEDIA_PORT_MIN + 220)) $((MEDIA_PORT_MIN + 230))
ACAO_PID=$TRUNK_PID
# The "tone" UAS sends the 440 Hz PCMU file from its working directory.
mkdir -p "$OUT/sipp-tone"
ln -sf "$(ensure_tone)" "$OUT/sipp-tone/tone-440hz.ulaw"
start_trunk tone "$TONE_PORT" "$TONE_MEDIA" $((MEDIA_PORT_MIN + 250)) tone_uas.xml
TONE_PID=$TRUNK_PID
wait_port_bound udp "$NOACAO_PORT" 10 "$NOACAO_PID" || die "SIPp (trunk noacao) did not start: $(tail -n 3 "$OUT/sipp-noacao/stdout")"
wait_port_bound udp "$ACAO_PORT" 10 "$ACAO_PID" || die "SIPp (trunk acao) did not start: $(tail -n 3 "$OUT/sipp-acao/stdout")"
wait_port_bound udp "$TONE_PORT" 10 "$TONE_PID" || die "SIPp (trunk tone) did not start: $(tail -n 3 "$OUT/sipp-tone/stdout")"

"$BIN" serve --config "$OUT/riptide.toml" >"$OUT/riptide.log" 2>&1 &
RIPTIDE_PID=$!
deadline=$(( $(date +%s) + 20 ))
until [ "$(curl -fsS --max-time 2 "http://127.0.0.1:$ADMIN_PORT/healthz" 2>/dev/null)" = ok ]; do
    kill -0 "$RIPTIDE_PID" 2>/dev/null || { tail -n 20 "$OUT/riptide.log" >&2; die "riptide exited at start"; }
    [ "$(date +%s)" -lt "$deadline" ] || die "riptide did not become healthy within 20 s (see $OUT/riptide.log)"
    sleep 0.1
done
wait_port_bound udp "$H3_PORT" 10 "$RIPTIDE_PID" || die "riptide's HTTP/3 listener is not up"

# Chromium accepts riptide's self-signed certificate by its public key.
SPKI_SHA256="$(openssl x509 -in "$OUT/data/cert.pem" -noout -pubkey \
    | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64)"

log "headless Chromium against riptide on 127.0.0.1:$H3_PORT"
set +e
RIPTIDE_URL="https://127.0.0.1:$H3_PORT" ADMIN_URL="http://127.0.0.1:$ADMIN_PORT" \
    SPKI_SHA256="$SPKI_SHA256" TOKEN="$TOKEN" OUT="$OUT" CHROMIUM="$(command -v chromium)" \
    timeout 90 node "$HERE/cors_wt.mjs" | tee "$OUT/results.txt"
rc=${PIPESTATUS[0]}

# The trunks' side of the SIP preflight: SIPp's exit status (a failed regexp check or an
# unexpected message makes it non-zero) and what it received.
# finish_trunk PID: waits (bounded) for the UAS; sets TRUNK_RC to its exit status.
finish_trunk() {
    TRUNK_RC=0
    if ! wait_pid_exit "$1" 10; then
        stop_pid "$1" 2
        TRUNK_RC="none, still running 10 s after the page: stopped"
        return
    fi
    wait "$1" || TRUNK_RC=$?
}
requests() { grep -c "^$2 sip:" "$OUT/sipp-$1/messages.log" 2>/dev/null || true; }
sipp_errors() { grep -v '^$' "$OUT/sipp-$1/errors.log" 2>/dev/null | head -n 3 | tr '\n' ' ' | cut -c1-300 || true; }
finish_trunk "$NOACAO_PID"; noacao_rc=$TRUNK_RC; NOACAO_PID=""
finish_trunk "$ACAO_PID"; acao_rc=$TRUNK_RC; ACAO_PID=""
{
    n_opt="$(requests noacao OPTIONS)"; n_inv="$(requests noacao INVITE)"
    if [ "$noacao_rc" = 0 ] && [ "$n_opt" = 1 ] && [ "$n_inv" = 0 ]; then r=PASS; else r=FAIL; fi
    echo "$r SIP preflight: trunk \"noacao\" got one OPTIONS with Origin: https://allowed.example (SIPp checked it), answered it without Access-Control-Allow-Origin, and was never INVITEd (SIPp exit $noacao_rc; received $n_opt OPTIONS, $n_inv INVITE; $(sipp_errors noacao))"
    n_opt="$(requests acao OPTIONS)"; n_inv="$(requests acao INVITE)"; n_ack="$(requests acao ACK)"
    if [ "$acao_rc" = 0 ] && [ "$n_opt" = 1 ] && [ "$n_inv" = 1 ] && [ "$n_ack" = 1 ]; then r=PASS; else r=FAIL; fi
    echo "$r SIP preflight: trunk \"acao\" allowed the origin and then got the INVITE with an SDP offer, refused 486 and ACKed (SIPp exit $acao_rc; received $n_opt OPTIONS, $n_inv INVITE, $n_ack ACK; $(sipp_errors acao))"
} | tee -a "$OUT/results.txt"

# --- the call from the dial pad: web/demo.html → riptide → SIPp UAS "tone" ---
log "headless Chromium: a call from web/demo.html to the SIP trunk \"tone\""
MIC_WAV="$OUT/mic-440hz.wav"
sox -n -r 48000 -c 1 -b 16 "$MIC_WAV" synth 60 sine 440 vol 0.5
# What the gateway sends the UAS's media port.
start_capture "$OUT/call.pcap" "udp and dst port $TONE_MEDIA"
RIPTIDE_URL="https://127.0.0.1:$H3_PORT" ADMIN_URL="http://127.0.0.1:$ADMIN_PORT" \
    SPKI_SHA256="$SPKI_SHA256" TOKEN="$TOKEN" OUT="$OUT" CHROMIUM="$(command -v chromium)" WEB_DIR="$REPO_ROOT/web" TONE_WAV="$MIC_WAV" DIAL=+15550100 \
    timeout 90 node "$HERE/call_e2e.mjs" | tee -a "$OUT/results.txt"
call_rc=${PIPESTATUS[0]}
[ "$rc" != 0 ] || rc=$call_rc
finish_trunk "$TONE_PID"; tone_rc=$TRUNK_RC; TONE_PID=""
stop_capture
sent="$(python3 "$HERE/tone_check.py" "$OUT/call.pcap" "$TONE_MEDIA" 440 2>&1)"
printf '%s\n' "$sent" >"$OUT/call-sip-side.txt"
val() { sed -n "s/^$1=//p" <<<"$sent"; }
{
    n_inv="$(requests tone INVITE)"; n_ack="$(requests tone ACK)"; n_bye="$(requests tone BYE)"
    if [ "$tone_rc" = 0 ] && [ "$n_inv" = 1 ] && [ "$n_ack" = 1 ] && [ "$n_bye" = 1 ]; then r=PASS; else r=FAIL; fi
    echo "$r call: SIP peer \"tone\" got an INVITE offering PCMU and telephone-event (SIPp checked it), answered, and got the BYE of the page's hang-up (SIPp exit $tone_rc; received $n_inv INVITE, $n_ack ACK, $n_bye BYE; $(sipp_errors tone))"
    # The microphone's tone, as riptide relayed it to the SIP side: PCMU RTP to the UAS's media
    # port whose decoded audio is a 440 Hz tone (Goertzel, median over 1 s blocks).
    if [ "$(val pcmu_packets)" -ge 150 ] 2>/dev/null \
        && awk -v t="$(val tone_fraction)" -v o="$(val off_fraction)" 'BEGIN { exit !(t >= 0.5 && o < 0.1) }'; then r=PASS; else r=FAIL; fi
    echo "$r call: the page's microphone (fake device, 440 Hz WAV) reaches the SIP peer as PCMU carrying 440 Hz (tcpdump on lo to port $TONE_MEDIA: $(val pcmu_packets) PCMU packets, $(val seconds) s, energy share at 440 Hz $(val tone_fraction), at 560 Hz $(val off_fraction), RMS $(val rms))"
    if [ "$(val dtmf_digits)" = 5 ] && [ "$(val dtmf_packets)" -ge 4 ] 2>/dev/null && [ "$(val dtmf_ends)" -ge 1 ] 2>/dev/null; then r=PASS; else r=FAIL; fi
    echo "$r call: the page's key 5 reaches the SIP peer as RFC 4733 (payload type 101: $(val dtmf_packets) packets, events \"$(val dtmf_digits)\", $(val dtmf_ends) with the end bit)"
} | tee -a "$OUT/results.txt"

# --- an opus call: web/demo.html with opus preferred → riptide's echo service (TG "local") ---
log "headless Chromium: an opus call (WebCodecs) from web/demo.html to the echo service"
RIPTIDE_URL="https://127.0.0.1:$H3_PORT" ADMIN_URL="http://127.0.0.1:$ADMIN_PORT" \
    SPKI_SHA256="$SPKI_SHA256" TOKEN="$TOKEN" OUT="$OUT" CHROMIUM="$(command -v chromium)" WEB_DIR="$REPO_ROOT/web" TONE_WAV="$MIC_WAV" DIAL=echo \
    timeout 90 node "$HERE/opus_e2e.mjs" | tee -a "$OUT/results.txt"
opus_rc=${PIPESTATUS[0]}
[ "$rc" != 0 ] || rc=$opus_rc

# --- calls to the page: SIPp phone → riptide → web/demo.html served by riptide, registered ---
log "headless Chromium: calls from a SIP phone to web/demo.html registered on TG \"web\""
PAGE_MIC_WAV="$OUT/mic-660hz.wav"
sox -n -r 48000 -c 1 -b 16 "$PAGE_MIC_WAV" synth 60 sine 660 vol 0.5
# What the gateway sends the phone's media port.
start_capture "$OUT/incoming.pcap" "udp and dst port $CALLER_MEDIA"
RIPTIDE_URL="https://127.0.0.1:$H3_PORT" ADMIN_URL="http://127.0.0.1:$ADMIN_PORT" \
    SPKI_SHA256="$SPKI_SHA256" TOKEN="$TOKEN" OUT="$OUT" CHROMIUM="$(command -v chromium)" \
    MIC_WAV="$PAGE_MIC_WAV" DATA_DIR="$OUT_DIR/browser/data" SIP_TARGET="127.0.0.1:$SIP_PORT" \
    CALLER_PORT="$CALLER_PORT" CALLER_MEDIA="$CALLER_MEDIA" SCENARIOS="$HERE/scenarios" CALLER_TONE="$(ensure_tone)" \
    timeout 240 node "$HERE/incoming_e2e.mjs" | tee -a "$OUT/results.txt"
incoming_rc=${PIPESTATUS[0]}
[ "$rc" != 0 ] || rc=$incoming_rc
stop_capture
sent="$(python3 "$HERE/tone_check.py" "$OUT/incoming.pcap" "$CALLER_MEDIA" 660 2>&1)"
printf '%s\n' "$sent" >"$OUT/incoming-sip-side.txt"
{
    # The page's microphone, as riptide relayed it to the SIP caller (only the answered call has
    # media): PCMU RTP whose decoded audio is a 660 Hz tone.
    if [ "$(val pcmu_packets)" -ge 100 ] 2>/dev/null \
        && awk -v t="$(val tone_fraction)" -v o="$(val off_fraction)" 'BEGIN { exit !(t >= 0.5 && o < 0.1) }'; then r=PASS; else r=FAIL; fi
    echo "$r incoming: the answering page's microphone (fake device, 660 Hz WAV) reaches the SIP caller as PCMU carrying 660 Hz (tcpdump on lo to port $CALLER_MEDIA: $(val pcmu_packets) PCMU packets, $(val seconds) s, energy share at 660 Hz $(val tone_fraction), at 780 Hz $(val off_fraction), RMS $(val rms))"
} | tee -a "$OUT/results.txt"
set -e

passed=$(grep -c '^PASS ' "$OUT/results.txt" || true)
failed=$(grep -c '^FAIL ' "$OUT/results.txt" || true)
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then
    echo "FAIL browser harness (exit status $rc; see $OUT)"
    failed=1
fi
echo "browser: $passed passed, $failed failed"
[ "$failed" = 0 ]
