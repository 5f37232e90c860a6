#!/usr/bin/env bash
# SIPp interop suite for riptide (see interop/README.md).
#
#   interop/sipp/run.sh [--direct] [--keep-pair] [SCENARIO ...]
#
# Default (pair mode): UAC -> gateway A 127.0.0.1:5070 -> HTTP/3 -> gateway B -> SIPp UAS 127.0.0.1:5080.
#   Uses a running pair (interop/pair.sh status) or starts one and stops it again at the end
#   (unless --keep-pair).
# --direct: UAC -> SIPp UAS on 127.0.0.1:5080 with no gateway, to validate the scenario files
#   themselves; the checks that need a gateway (i, and the "relayed by the gateway" source-port
#   checks of a/f) are reported as SKIP, never silently dropped.
# n-call: the caller is `riptide call --config config/pair-a.toml` (the native RIPT client) instead
#   of SIPp + gateway A; pair mode only.
# Prints one PASS/FAIL/SKIP line per scenario and ends with `sipp: N passed, M failed`
# (`, K skipped` is appended only when something was skipped). Exit status 1 on any failure.
# Logs and traces: interop/out/sipp/<scenario>/.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/..
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib/common.sh"

SCN_DIR="$INTEROP_DIR/sipp/scenarios"
LOG_ROOT="$OUT_DIR/sipp"
ALL_SCENARIOS="a-basic-rtp b-busy-486 c-no-answer d-cancel e-callee-bye f-early-media g-hold-resume h-options i-malformed j-origin k-stir l-verify m-digest n-call o-late-fork p-media-timeout q-session-timer r-prack s-delayed-offer t-pt-renumber u-delayed-prack v-dtmf-info"

UAC_PORT=5090; UAC_MEDIA=16000; UAC_CP=8891
UAS_PORT=5080; UAS_MEDIA=17000; UAS_CP=8890
A_MEDIA="20000-24999"; B_MEDIA="25000-29999"
MIN_RTP="${MIN_RTP:-50}"        # packets each side must receive in (a): 3 s of 20 ms packets is 150
MIN_EARLY_RTP="${MIN_EARLY_RTP:-25}"  # packets before the 200 in (f): 3 s of early media is 150
SIPP_TIMEOUT="${SIPP_TIMEOUT:-40}"    # seconds, per SIPp process (-timeout, plus `timeout` as a backstop)

MODE=pair; KEEP_PAIR=0; SELECTED=()
while [ $# -gt 0 ]; do
    case "$1" in
        --direct) MODE=direct ;;
        --keep-pair) KEEP_PAIR=1 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        -*) die "unknown option $1" ;;
        *) SELECTED+=("$1") ;;
    esac
    shift
done
[ ${#SELECTED[@]} -gt 0 ] || read -r -a SELECTED <<<"$ALL_SCENARIOS"
for s in "${SELECTED[@]}"; do
    case " $ALL_SCENARIOS " in *" $s "*) ;; *) die "unknown scenario '$s' (known: $ALL_SCENARIOS)" ;; esac
done

need_cmd sipp sip-tester
need_cmd python3 python3
need_cmd ss iproute2
need_cmd curl curl
need_cmd timeout coreutils
need_cmd tcpdump tcpdump

if [ "$MODE" = pair ]; then
    TARGET="127.0.0.1:5070"
else
    TARGET="127.0.0.1:$UAS_PORT"
fi

UAS_PID=""
OWN_GW_PID=""
cleanup() {
    [ -z "$UAS_PID" ] || stop_pid "$UAS_PID" 2
    [ -z "$OWN_GW_PID" ] || stop_pid "$OWN_GW_PID" 2
    stop_capture
    [ "$KEEP_PAIR" = 1 ] || pair_release
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$MODE" != pair ] || pair_acquire

mkdir -p "$LOG_ROOT"
TONE_DIR="$LOG_ROOT"
TONE="$(cd "$TONE_DIR" && python3 "$INTEROP_DIR/lib/mktone.py" tone-440hz.ulaw 2 && echo "$TONE_DIR/tone-440hz.ulaw")"

# Every SIPp process: quiet screen, traces into the cwd (the scenario's log dir), bounded run time.
sipp_common() {
    printf '%s\n' -i 127.0.0.1 -mi 127.0.0.1 -nostdin -trace_msg -trace_err -trace_screen \
        -timeout "${SIPP_TIMEOUT}s" -timeout_error -max_recv_loops 1000
}

# start_uas SCENARIO_FILE DIR [extra sipp args]: SIPp UAS on 127.0.0.1:5080, one call; sets UAS_PID.
start_uas() {
    local scn="$1" dir="$2"; shift 2
    port_bound udp "$UAS_PORT" && die "127.0.0.1:$UAS_PORT is already in use: $(port_users udp "$UAS_PORT")"
    local args; mapfile -t args < <(sipp_common)
    (cd "$dir" && exec timeout -k 5 $((SIPP_TIMEOUT + 10)) sipp -sf "$SCN_DIR/$scn" -p "$UAS_PORT" \
        -mp "$UAS_MEDIA" -cp "$UAS_CP" -m 1 -aa "${args[@]}" "$@") >"$dir/uas.stdout" 2>&1 &
    UAS_PID=$!
    wait_port_bound udp "$UAS_PORT" 10 "$UAS_PID" || return 1
}

# run_uac SCENARIO_FILE DIR [extra sipp args]: SIPp UAC toward $TARGET, one call; returns sipp's status.
run_uac() {
    local scn="$1" dir="$2"; shift 2
    local args; mapfile -t args < <(sipp_common)
    (cd "$dir" && exec timeout -k 5 $((SIPP_TIMEOUT + 10)) sipp "$TARGET" -sf "$SCN_DIR/$scn" -s answer \
        -p "$UAC_PORT" -mp "$UAC_MEDIA" -cp "$UAC_CP" -m 1 -l 1 -recv_timeout 15s "${args[@]}" "$@") \
        >"$dir/uac.stdout" 2>&1
}

# finish_uas: wait (bounded) for the UAS to finish its call; returns its exit status.
finish_uas() {
    local rc=0 grace="${1:-15}"
    [ -n "$UAS_PID" ] || return 0
    if ! wait_pid_exit "$UAS_PID" "$grace"; then
        log "UAS still running ${grace} s after the UAC finished: stopping it"
        stop_pid "$UAS_PID" 2
        UAS_PID=""
        return 124
    fi
    wait "$UAS_PID" || rc=$?
    UAS_PID=""
    return "$rc"
}

# sipp_pair NAME UAC_XML UAS_XML [uac extra args]: run one UAC/UAS pair; sets DETAIL on failure.
sipp_pair() {
    local name="$1" uac="$2" uas="$3"; shift 3
    local dir="$LOG_ROOT/$name" uac_rc=0 uas_rc=0
    if [ -n "$uas" ]; then
        start_uas "$uas" "$dir" || { DETAIL="UAS did not start: $(tail -n 3 "$dir/uas.stdout")"; return 1; }
    fi
    run_uac "$uac" "$dir" "$@" || uac_rc=$?
    if [ -n "$uas" ]; then
        # If the UAC already failed, the UAS is likely waiting for something that will not come.
        if [ "$uac_rc" = 0 ]; then finish_uas 15 || uas_rc=$?; else finish_uas 3 || uas_rc=$?; fi
    fi
    if [ "$uac_rc" != 0 ] || [ "$uas_rc" != 0 ]; then
        DETAIL="uac exit=$uac_rc uas exit=$uas_rc; logs: $dir"
        local err
        err="$(cat "$dir"/*_errors.log 2>/dev/null | grep -v '^$' | head -n 3 | tr '\n' ' ' || true)"
        [ -z "$err" ] || DETAIL="$DETAIL; first errors: ${err:0:300}"
        return 1
    fi
    if [ -n "$uas" ]; then DETAIL="uac exit=0 uas exit=0"; else DETAIL="uac exit=0 (no UAS)"; fi
    return 0
}

rtp_filter="udp and (port $UAC_MEDIA or port $UAS_MEDIA or port $UAC_PORT)"

# rtp_both_ways DIR NAME UAC_XML WHAT: a call whose UAC and UAS (rtp_uas.xml) send PCMU for 3 s;
# each must receive >= MIN_RTP packets from the gateways' media ranges (pcap on lo).
rtp_both_ways() {
    local dir="$1" name="$2" uac="$3" what="$4" counts uac_rx uas_rx src_uac src_uas
    ln -sf "$TONE" "$dir/tone-440hz.ulaw"
    start_capture "$dir/rtp.pcap" "$rtp_filter"
    sipp_pair "$name" "$uac" rtp_uas.xml -d 3000 || { stop_capture; return 1; }
    stop_capture
    if [ "$MODE" = pair ]; then src_uac="$A_MEDIA"; src_uas="$B_MEDIA"; else src_uac="$UAS_MEDIA"; src_uas="$UAC_MEDIA"; fi
    counts="$(python3 "$INTEROP_DIR/lib/rtpcount.py" "$dir/rtp.pcap" \
        "uac_rx,src=$src_uac,dst=$UAC_MEDIA" "uas_rx,src=$src_uas,dst=$UAS_MEDIA")"
    uac_rx="$(sed -n 's/^uac_rx=//p' <<<"$counts")"; uas_rx="$(sed -n 's/^uas_rx=//p' <<<"$counts")"
    DETAIL="${what}RTP received (pcap on lo): UAC $uac_rx pkts from $src_uac, UAS $uas_rx pkts from $src_uas (need >= $MIN_RTP each)"
    [ "$uac_rx" -ge "$MIN_RTP" ] && [ "$uas_rx" -ge "$MIN_RTP" ]
}

scn_a() { rtp_both_ways "$1" a-basic-rtp rtp_uac.xml ""; } # basic call with RTP both ways

scn_b() { sipp_pair b-busy-486 busy_uac.xml busy_uas.xml; }
scn_c() { sipp_pair c-no-answer noanswer_uac.xml noanswer_uas.xml; }
scn_d() { sipp_pair d-cancel cancel_uac.xml cancel_uas.xml; }
scn_e() { sipp_pair e-callee-bye calleebye_uac.xml calleebye_uas.xml; }
# A second fork's 200 after the call ended: gateway B must ACK it and BYE that dialog.
scn_o() { sipp_pair o-late-fork call_uac.xml latefork_uas.xml -d 500; }
# Delayed offer: an INVITE without SDP, our offer in the 200, the answer in the ACK; RTP both ways.
scn_s() { rtp_both_ways "$1" s-delayed-offer delayed_uac.xml "offer in the 200, answer in the ACK; "; }
# Delayed offer with 100rel required (RFC 3262 §5): the offer in A's reliable 180, the answer in
# the PRACK, a 200 without SDP; RTP both ways.
scn_u() { rtp_both_ways "$1" u-delayed-prack delayed_prack_uac.xml "offer in the reliable 180, answer in the PRACK; "; }
# Reliable provisionals (RFC 3262) both ways: the caller requires them of A, the callee sends
# them to B; every 180/183 is PRACKed and the 200 waits for the PRACK of the answer.
scn_r() { sipp_pair r-prack prack_uac.xml prack_uas.xml; }

# Payload types the callee numbers its own way (RFC 3264 §5.1, §6.1): it answers telephone-event
# 101 with 100, then re-INVITEs with 96. Gateway B must send it the callee's numbers and pass its
# 96 on to A as 101; the caller must never see anything but its own 101.
# te_pcaps DIR PT...: SIPp's RFC 4733 capture of key 1 as te<PT>.pcap in DIR, one per payload type.
te_pcaps() {
    local dir="$1"; shift
    python3 - /usr/share/sip-tester/dtmf_2833_1.pcap "$dir" "$@" <<'PY' || { DETAIL="could not write the DTMF pcaps"; return 1; }
import sys
src, out, pts = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3:]]
data = open(src, "rb").read()  # Ethernet, 24-byte file header, 16-byte record headers
for pt in pts:
    b, off = bytearray(data), 24
    while off + 16 <= len(b):
        incl = int.from_bytes(b[off + 8:off + 12], "little")
        rtp = off + 16 + 42
        b[rtp + 1] = (b[rtp + 1] & 0x80) | pt
        off += 16 + incl
    open(f"{out}/te{pt}.pcap", "wb").write(b)
PY
}

scn_t() {
    local dir="$1" counts
    te_pcaps "$dir" 101 96 || return 1
    start_capture "$dir/rtp.pcap" "$rtp_filter"
    sipp_pair t-pt-renumber pt_uac.xml pt_uas.xml || { stop_capture; return 1; }
    stop_capture
    counts="$(python3 "$INTEROP_DIR/lib/rtpcount.py" "$dir/rtp.pcap" \
        "uas100,src=$B_MEDIA,dst=$UAS_MEDIA,pt=100" "uas96,src=$B_MEDIA,dst=$UAS_MEDIA,pt=96" \
        "uas101,src=$B_MEDIA,dst=$UAS_MEDIA,pt=101" "uac101,src=$A_MEDIA,dst=$UAC_MEDIA,pt=101" \
        "uac96,src=$A_MEDIA,dst=$UAC_MEDIA,pt=96")"
    cnt() { sed -n "s/^$1=//p" <<<"$counts"; }
    DETAIL="events at the callee (pcap on lo): $(cnt uas100) as 100 after its answer, $(cnt uas96) as 96 after its re-INVITE, $(cnt uas101) as 101 (want 0); at the caller: $(cnt uac101) as 101, $(cnt uac96) as 96 (want 0)"
    [ "$(cnt uas100)" -ge 5 ] && [ "$(cnt uas96)" -ge 5 ] && [ "$(cnt uas101)" = 0 ] \
        && [ "$(cnt uac101)" -ge 5 ] && [ "$(cnt uac96)" = 0 ]
}

# A callee whose answer takes no telephone-event (RFC 3264 §6.1: none may be sent to it): the
# caller's key reaches it as SIP INFO (its scenario checks Signal=1), and no event packet does.
scn_v() {
    local dir="$1" counts
    te_pcaps "$dir" 101 || return 1
    start_capture "$dir/rtp.pcap" "$rtp_filter"
    sipp_pair v-dtmf-info dtmf_info_uac.xml dtmf_info_uas.xml || { stop_capture; return 1; }
    stop_capture
    counts="$(python3 "$INTEROP_DIR/lib/rtpcount.py" "$dir/rtp.pcap" \
        "uac,src=$UAC_MEDIA,dst=$A_MEDIA,pt=101" "uas,dst=$UAS_MEDIA,pt=101")"
    cnt() { sed -n "s/^$1=//p" <<<"$counts"; }
    DETAIL="INFO with Signal=1 at the callee (SIPp checked it); events (pcap on lo): $(cnt uac) from the caller, $(cnt uas) at the callee (want 0)"
    [ "$(cnt uac)" -ge 5 ] && [ "$(cnt uas)" = 0 ]
}

scn_f() { # 183 early media: RTP must reach the UAC before the 200 OK
    local dir="$1" counts early found src
    ln -sf "$TONE" "$dir/tone-440hz.ulaw"
    start_capture "$dir/rtp.pcap" "$rtp_filter"
    sipp_pair f-early-media early_uac.xml early_uas.xml || { stop_capture; return 1; }
    stop_capture
    if [ "$MODE" = pair ]; then src="$A_MEDIA"; else src="$UAS_MEDIA"; fi
    counts="$(python3 "$INTEROP_DIR/lib/rtpcount.py" "$dir/rtp.pcap" "early,src=$src,dst=$UAC_MEDIA" \
        --until '\ASIP/2\.0 200 .*CSeq:[ \t]*1 INVITE' --until-dst "$UAC_PORT")"
    early="$(sed -n 's/^early=//p' <<<"$counts")"; found="$(sed -n 's/^until_found=//p' <<<"$counts")"
    DETAIL="RTP at the UAC before the 200 OK (pcap on lo): $early pkts from $src (need >= $MIN_EARLY_RTP); 200 seen in capture: $found"
    [ "$found" = 1 ] && [ "$early" -ge "$MIN_EARLY_RTP" ]
}

scn_g() { sipp_pair g-hold-resume hold_uac.xml hold_uas.xml; }

scn_h() {
    if [ "$MODE" = pair ]; then
        sipp_pair h-options options_uac.xml ""
    else
        sipp_pair h-options options_uac.xml options_uas.xml
    fi
}

scn_j() { # SIP CORS preflight: ACAO for the allowed origin, 403 without it for a look-alike
    if [ "$MODE" = pair ]; then
        sipp_pair j-origin origin_uac.xml ""
    else
        sipp_pair j-origin origin_uac.xml origin_uas.xml
    fi
}

scn_k() { # STIR: gateway B signs the call it sends to the SIP peer; checked three ways
    local dir="$1" id stir="$OUT_DIR/stir" out
    sipp_pair k-stir stir_uac.xml stir_uas.xml -d 200 || return 1
    id="$(grep -h -m1 '^Identity:' "$dir"/stir_uas_*_messages.log | sed 's/^Identity: *//' | tr -d '\r')"
    [ -n "$id" ] || { DETAIL="no Identity header in the UAS log"; return 1; }
    # riptide's own verifier, against the test PKI's root (offline: chain from the file).
    out="$("$REPO_ROOT/target/release/riptide" stir verify --identity "$id" \
        --chain "$stir/sp-chain.pem" --trust "$stir/sti-ca-root.pem" 2>&1)" \
        || { DETAIL="riptide stir verify: $out"; return 1; }
    # An independent implementation (Python cryptography) checks the signature and claims.
    local py
    py="$(python3 "$INTEROP_DIR/lib/verify_passport.py" "$id" "$stir/sp-leaf.pem" 2>&1)" \
        || { DETAIL="verify_passport.py: $py"; return 1; }
    # The x5u is published over HTTPS/1.1 (B's certificate, verified by curl).
    curl -sS --max-time 5 --cacert "$OUT_DIR/b/cert.pem" https://localhost:8443/sp-chain.pem -o "$dir/x5u.pem" \
        || { DETAIL="x5u not fetchable with curl"; return 1; }
    cmp -s "$dir/x5u.pem" "$stir/sp-chain.pem" || { DETAIL="x5u serves something else"; return 1; }
    DETAIL="Identity on the INVITE; riptide: $(tr '\n' ' ' <<<"$out"); python cryptography: $py; x5u fetched with curl"
}

scn_l() { # STIR verification on A: B's Identity (from k) verifies (x5u fetched from B); tampered: 438
    local dir="$1" id bad sig
    id="$(grep -h -m1 '^Identity:' "$LOG_ROOT"/k-stir/stir_uas_*_messages.log 2>/dev/null | sed 's/^Identity: *//' | tr -d '\r')"
    if [ -z "$id" ]; then
        # Run on its own: make a signed call first (k), then use its Identity.
        mkdir -p "$LOG_ROOT/k-stir"
        scn_k "$LOG_ROOT/k-stir" || { DETAIL="k-stir (which signs the Identity) failed: $DETAIL"; return 1; }
        id="$(grep -h -m1 '^Identity:' "$LOG_ROOT"/k-stir/stir_uas_*_messages.log | sed 's/^Identity: *//' | tr -d '\r')"
    fi
    sipp_pair l-verify stir_verified_uac.xml stir_verstat_uas.xml -d 200 -key identity "$id" \
        || { DETAIL="verified call: $DETAIL"; return 1; }
    # Transit: the caller's PASSporT reached the callee unchanged (A passed it on in POST
    # passport, B as Identity), not replaced by B's own signature.
    local jws="${id%%;*}" got
    got="$(grep -h -m1 '^Identity:' "$LOG_ROOT"/l-verify/stir_verstat_uas_*_messages.log 2>/dev/null | sed 's/^Identity: *//' | tr -d '\r')"
    [ "${got%%;*}" = "$jws" ] || { DETAIL="the callee got another PASSporT than the caller sent: ${got:0:60}..."; return 1; }
    # Flip one character of the signature (the JWS's third part) and send it again.
    sig="${id%%;*}"; sig="${sig##*.}"
    bad="${id/$sig/${sig:0:10}$([ "${sig:10:1}" = A ] && echo B || echo A)${sig:11}}"
    mkdir -p "$LOG_ROOT/l-verify-bad"
    sipp_pair l-verify-bad stir_refused_uac.xml "" -key identity "$bad" \
        || { DETAIL="tampered Identity not refused with 438: $DETAIL"; return 1; }
    DETAIL="B's Identity verified by A (x5u fetched over HTTPS), call placed, the caller's PASSporT reached the callee unchanged and B put verstat=TN-Validation-Passed on From; tampered Identity: 438"
}

# (m) runs its own gateway (either mode): SIP 127.0.0.1:5076, HTTP/3 127.0.0.1:4437, admin 9076.
DIGEST_SIP=5076; DIGEST_ADMIN=9076

# self_calling_config DIR NAME SIP HTTP3 ADMIN MEDIA_MIN SIP_EXTRA MEDIA_EXTRA TRUNK_EXTRA: writes
# DIR/gateway.toml for a gateway of a scenario's own that sends every SIP call (UDP on SIP) to its
# own HTTP/3 server (on HTTP3), whose TG "trunk" routes it to trunk "pbx", the SIPp UAS. Media
# ports MEDIA_MIN and the 999 after it; the *_EXTRA lines go into [sip], [media] and the trunk.
self_calling_config() {
    local dir="$1" name="$2" sip="$3" h3="$4" admin="$5" media="$6"
    cat >"$dir/gateway.toml" <<TOML
[general]
node_name = "$name"
data_dir = "$dir/data"

[sip]
udp = ["127.0.0.1:$sip"]
tcp = []
$7

[http3]
listen = "127.0.0.1:$h3"

[admin]
listen = "127.0.0.1:$admin"

[media]
ip = "127.0.0.1"
port_min = $media
port_max = $((media + 999))
$8

[[tg]]
name = "trunk"
  [[tg.route]]
  prefix = ""
  sip_trunk = "pbx"

[[sip_route]]
prefix = ""
ript_peer = "self"

[[sip_trunk]]
name = "pbx"
target = "sip:127.0.0.1:$UAS_PORT;transport=udp"
$9
TOML
}

# start_own_gateway DIR ADMIN_PORT: `riptide serve --config DIR/gateway.toml` (a gateway of the
# scenario's own, not the pair), logging to DIR/gateway.log; waits until ADMIN_PORT's /healthz
# answers. Sets OWN_GW_PID (stopped by cleanup) and DETAIL on failure.
start_own_gateway() {
    local dir="$1" admin="$2" bin="${RIPTIDE_BIN:-$REPO_ROOT/target/release/riptide}" i
    # The pair's build step (nothing with RIPTIDE_BIN; a rebuild when the sources are newer).
    "$INTEROP_DIR/pair.sh" build >"$dir/build.log" 2>&1 \
        || { DETAIL="build failed: $dir/build.log"; return 1; }
    (cd "$dir" && exec "$bin" serve --config "$dir/gateway.toml") </dev/null >"$dir/gateway.log" 2>&1 &
    OWN_GW_PID=$!
    for i in $(seq 1 100); do
        [ "$(curl -fsS --max-time 1 "http://127.0.0.1:$admin/healthz" 2>/dev/null)" = ok ] && break
        kill -0 "$OWN_GW_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ "$(curl -fsS --max-time 1 "http://127.0.0.1:$admin/healthz" 2>/dev/null)" != ok ]; then
        DETAIL="gateway not healthy: $(tail -n 3 "$dir/gateway.log" | tr '\n' ' ')"
        stop_pid "$OWN_GW_PID" 2; OWN_GW_PID=""
        return 1
    fi
}

scn_m() { # SIP Digest both ways through one gateway calling itself over HTTP/3
    local dir="$1" ha1 rc=0
    # The caller (SIPp UAC on 5090) is on trunk "pbx" with auth = "digest"; its user has an MD5
    # HA1 only, so the 401 offers MD5, which SIPp computes. Calls go to our own HTTP/3 server,
    # whose TG routes them to the same trunk's target, SIPp UAS on 5080, which challenges our
    # INVITE and checks the credentials (verifyauth) of riptide's login.
    port_bound udp "$DIGEST_SIP" && { DETAIL="127.0.0.1:$DIGEST_SIP is in use: $(port_users udp "$DIGEST_SIP")"; return 1; }
    ha1="$(printf '%s' 'sipp:riptide.interop:sipp-pw' | md5sum | cut -d' ' -f1)"
    self_calling_config "$dir" digest "$DIGEST_SIP" 4437 "$DIGEST_ADMIN" 31000 \
        'digest_realm = "riptide.interop"
digest_lockout_secs = 60' '' \
        "match_sources = [\"127.0.0.1:$UAC_PORT\"]
auth = \"digest\"
users = [{ name = \"sipp\", ha1_md5 = \"$ha1\" }]
username = \"riptide\"
password = \"trunk-pw\""
    start_own_gateway "$dir" "$DIGEST_ADMIN" || return 1
    # SIPp's credentials name remote_ip:port unless told the Request-URI; riptide checks them.
    TARGET="127.0.0.1:$DIGEST_SIP" sipp_pair m-digest digest_uac.xml digest_uas.xml -d 200 \
        -auth_uri "answer@127.0.0.1:$DIGEST_SIP" || rc=1
    stop_pid "$OWN_GW_PID" 5; OWN_GW_PID=""
    [ "$rc" = 0 ] || return 1
    grep -q 'digest authentication passed' "$dir/gateway.log" \
        || { DETAIL="the gateway did not log the caller's authentication; log: $dir/gateway.log"; return 1; }
    grep -q "answering the trunk's digest challenge" "$dir/gateway.log" \
        || { DETAIL="the gateway did not log answering the trunk's challenge; log: $dir/gateway.log"; return 1; }
    DETAIL="SIPp's MD5 credentials accepted after riptide's 401; riptide's answer to SIPp's 401 verified by SIPp (verifyauth), ACK of the 200 with credentials; call set up and ended"
}

# own_gateway_pair DIR NAME SIP HTTP3 ADMIN MEDIA SIP_EXTRA MEDIA_EXTRA SCENARIO UAC UAS METRIC:
# one SIPp pair (SCENARIO, UAC and UAS files) through a self-calling gateway of the scenario's
# own (self_calling_config with these ports and extra lines, no trunk extras), which must have
# counted METRIC at least once. Sets METRIC_COUNT, and DETAIL on failure.
own_gateway_pair() {
    local dir="$1" name="$2" sip="$3" h3="$4" admin="$5" media="$6" rc=0
    local scn="$9" uac="${10}" uas="${11}" metric="${12}"
    port_bound udp "$sip" && { DETAIL="127.0.0.1:$sip is in use: $(port_users udp "$sip")"; return 1; }
    self_calling_config "$dir" "$name" "$sip" "$h3" "$admin" "$media" "$7" "$8" ''
    start_own_gateway "$dir" "$admin" || return 1
    TARGET="127.0.0.1:$sip" sipp_pair "$scn" "$uac" "$uas" || rc=1
    METRIC_COUNT="$(metric_sum "http://127.0.0.1:$admin/metrics" "$metric")"
    stop_pid "$OWN_GW_PID" 5; OWN_GW_PID=""
    [ "$rc" = 0 ] || return 1
    [ "$METRIC_COUNT" -ge 1 ] || { DETAIL="$metric is $METRIC_COUNT; log: $dir/gateway.log"; return 1; }
}

TIMEOUT_SIP=5077; TIMEOUT_ADMIN=9077
scn_p() { # media timeout: neither SIP peer sends RTP; the gateway ends the call on both legs
    local dir="$1" uac_s uas_s
    own_gateway_pair "$dir" timeout "$TIMEOUT_SIP" 4438 "$TIMEOUT_ADMIN" 30000 '' 'timeout_secs = 2' \
        p-media-timeout timeout_uac.xml timeout_uas.xml riptide_media_timeouts_total || return 1
    # From each side's ACK to the BYE it got, by SIPp's own message timestamps.
    uac_s="$(python3 "$INTEROP_DIR/lib/sip_gap.py" "$dir"/timeout_uac_*_messages.log)" || uac_s=""
    uas_s="$(python3 "$INTEROP_DIR/lib/sip_gap.py" "$dir"/timeout_uas_*_messages.log)" || uas_s=""
    awk -v a="$uac_s" -v b="$uas_s" 'BEGIN { exit !(a != "" && b != "" && a >= 2 && b >= 2) }' \
        || { DETAIL="ACK to BYE: UAC ${uac_s:-?} s, UAS ${uas_s:-?} s; both must be at least the 2 s media timeout"; return 1; }
    DETAIL="no RTP either way: both SIPp peers got a BYE with Reason cause=102;text=\"Media timeout\", ${uac_s} s (UAC) and ${uas_s} s (UAS) after the ACK (limit 2 s); riptide_media_timeouts_total=$METRIC_COUNT"
}

SESSION_SIP=5078; SESSION_ADMIN=9078
scn_q() { # session timers (RFC 4028) on both legs: the callee's refreshed by us, the caller's expired
    local dir="$1" refresh_s expire_s
    # One call of about 62 s: the refresh comes at 45 s, the expiry at 60 s after the caller's
    # last refresh. SIPp's whole-run limit is raised for it alone.
    local SIPP_TIMEOUT=100
    # No RTP flows in this call: the media timeout is off so that only the session timer ends it.
    own_gateway_pair "$dir" session "$SESSION_SIP" 4439 "$SESSION_ADMIN" 32000 \
        'session_expires_secs = 90' 'timeout_secs = 0' \
        q-session-timer timer_uac.xml timer_uas.xml riptide_sip_session_expired_total || return 1
    # By SIPp's own message timestamps: the callee's ACK to our refresh re-INVITE (45 s), the
    # caller's refresh (UPDATE) to the BYE it got (60 s).
    refresh_s="$(python3 "$INTEROP_DIR/lib/sip_gap.py" "$dir"/timer_uas_*_messages.log ACK INVITE)" || refresh_s=""
    expire_s="$(python3 "$INTEROP_DIR/lib/sip_gap.py" "$dir"/timer_uac_*_messages.log UPDATE BYE)" || expire_s=""
    awk -v r="$refresh_s" -v e="$expire_s" 'BEGIN { exit !(r != "" && e != "" && r >= 44 && r <= 47 && e >= 59 && e <= 63) }' \
        || { DETAIL="refresh after ${refresh_s:-?} s (want 45), BYE ${expire_s:-?} s after the caller's refresh (want 60); logs: $dir"; return 1; }
    DETAIL="caller: 90 s granted (refresher=uac, Require: timer), its UPDATE refresh answered without SDP, BYE (Session timer expired) ${expire_s} s after it; callee: asked for 90 s, refreshed by our re-INVITE ${refresh_s} s after its ACK; riptide_sip_session_expired_total=$METRIC_COUNT"
}

# (n) `riptide call` (the native RIPT client) -> HTTP/3 -> gateway B -> SIPp UAS on 5080.
scn_n() { # riptide call with --config config/pair-a.toml: the tone crosses both ways
    local dir="$1" bin="$REPO_ROOT/target/release/riptide" rc=0 uas_rc=0 summary uas_rx check
    [ -x "$bin" ] || (cd "$REPO_ROOT" && cargo build --release --locked) >"$dir/build.log" 2>&1 \
        || { DETAIL="cargo build failed: $dir/build.log"; return 1; }
    ln -sf "$TONE" "$dir/tone-440hz.ulaw"
    # The 2 s 440 Hz tone as the 8 kHz mono 16-bit WAV that riptide call plays.
    python3 - "$dir/tone.wav" <<'PY'
import math, struct, sys, wave
w = wave.open(sys.argv[1], "wb")
w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)
w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 8000))) for i in range(16000)))
w.close()
PY
    start_uas rtp_uas.xml "$dir" || { DETAIL="UAS did not start: $(tail -n 3 "$dir/uas.stdout")"; return 1; }
    start_capture "$dir/rtp.pcap" "udp and port $UAS_MEDIA"
    (cd "$dir" && timeout -k 5 "$SIPP_TIMEOUT" "$bin" call --config "$REPO_ROOT/config/pair-a.toml" \
        sip:answer@127.0.0.1 --play tone.wav --record out.wav --duration 3) \
        >"$dir/call.stdout" 2>"$dir/call.stderr" || rc=$?
    finish_uas 15 || uas_rc=$?
    stop_capture
    summary="$(tr '\n' ';' <"$dir/call.stdout" | sed 's/  */ /g')"
    if [ "$rc" != 0 ] || [ "$uas_rc" != 0 ]; then
        DETAIL="riptide call exit=$rc uas exit=$uas_rc: $(tr '\n' ' ' <"$dir/call.stderr" | tail -c 300) $summary; logs: $dir"
        return 1
    fi
    # The destination's user part survived both hops.
    grep -q '^INVITE sip:answer@' "$dir"/rtp_uas_*_messages.log \
        || { DETAIL="the UAS got no INVITE for sip:answer@...; logs: $dir"; return 1; }
    # RTP that reached the UAS from B's media range, decoded: it must carry the 440 Hz tone.
    # The recording of riptide call (what the UAS streamed back) must carry it too.
    check="$(python3 - "$dir/rtp.pcap" "$B_MEDIA" "$UAS_MEDIA" "$dir/out.wav" "$INTEROP_DIR/lib" <<'PY'
import math, sys, wave
sys.path.insert(0, sys.argv[5])
from rtpcount import udp_records

def ulaw2lin(c):
    c = ~c & 0xFF
    t = (((c & 0x0F) << 3) + 0x84) << ((c & 0x70) >> 4)
    return 0x84 - t if c & 0x80 else t - 0x84

def tone(samples):
    """Power at 440 Hz over power at 1000 Hz (Goertzel), and the 440 Hz power."""
    def g(hz):
        k = 2 * math.cos(2 * math.pi * hz / 8000)
        s1 = s2 = 0.0
        for v in samples:
            s1, s2 = v + k * s1 - s2, s1
        return (s1 * s1 + s2 * s2 - k * s1 * s2) / max(len(samples), 1) ** 2
    on, off = g(440), g(1000)
    return on / max(off, 1e-9), on

lo, hi = (int(x) for x in sys.argv[2].split("-"))
dst = int(sys.argv[3])
payload, n = [], 0
for _, sport, _, dport, data, _ in udp_records(sys.argv[1]):
    if lo <= sport <= hi and dport == dst and len(data) > 12 and data[0] >> 6 == 2 and data[1] & 0x7F == 0:
        n += 1
        cc = data[0] & 0x0F
        payload.extend(ulaw2lin(b) for b in data[12 + 4 * cc:])
ratio, power = tone(payload)
w = wave.open(sys.argv[4], "rb")
rec = [int.from_bytes(w.readframes(1), "little", signed=True) for _ in range(w.getnframes())]
rratio, rpower = tone(rec)
ok = n >= 100 and ratio > 100 and power > 1e5 and len(rec) >= 8000 and rratio > 100 and rpower > 1e5
print(f"uas_rx={n} uas_tone_ratio={ratio:.0f} recorded_samples={len(rec)} recorded_tone_ratio={rratio:.0f} ok={int(ok)}")
PY
)" || { DETAIL="pcap/recording check failed: $check"; return 1; }
    uas_rx="$(sed -n 's/.*uas_rx=\([0-9]*\).*/\1/p' <<<"$check")"
    DETAIL="riptide call: $summary; INVITE sip:answer@ at the UAS; UAS side (pcap on lo, PCMU from $B_MEDIA decoded): $check"
    [ "${check##*ok=}" = 1 ] && [ "${uas_rx:-0}" -ge "$MIN_RTP" ]
}

scn_i() { # malformed probe, then a normal call must still work
    local dir="$1" rc=0
    python3 "$INTEROP_DIR/sipp/malformed.py" --sip 127.0.0.1:5070 --metrics http://127.0.0.1:9070/metrics \
        >"$dir/malformed.out" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then
        DETAIL="$(grep FAIL "$dir/malformed.out" | tr '\n' ' ')(full output: $dir/malformed.out)"
        return 1
    fi
    sipp_pair i-malformed call_uac.xml call_uas.xml -d 500 || { DETAIL="call after the probe failed: $DETAIL"; return 1; }
    DETAIL="$(grep -E 'reply to broken|after garbage' "$dir/malformed.out" | tr '\n' ';' | sed 's/;/; /g') normal call afterwards ok"
}

PASSED=0; FAILED=0; SKIPPED=0
for s in "${SELECTED[@]}"; do
    dir="$LOG_ROOT/$s"
    rm -rf "$dir"; mkdir -p "$dir"
    if [ "$MODE" = direct ] && { [ "$s" = k-stir ] || [ "$s" = l-verify ]; }; then
        echo "SKIP $s (direct mode: the gateway is the signer)"
        SKIPPED=$((SKIPPED + 1))
        continue
    fi
    if [ "$MODE" = direct ] && [ "$s" = u-delayed-prack ]; then
        echo "SKIP $s (direct mode: the gateway is what offers in the 180)"
        SKIPPED=$((SKIPPED + 1))
        continue
    fi
    if [ "$MODE" = direct ] && { [ "$s" = t-pt-renumber ] || [ "$s" = v-dtmf-info ]; }; then
        echo "SKIP $s (direct mode: the gateway is what renumbers and interworks)"
        SKIPPED=$((SKIPPED + 1))
        continue
    fi
    if [ "$MODE" = direct ] && [ "$s" = o-late-fork ]; then
        echo "SKIP $s (direct mode: the caller, not a gateway, would get the late 200)"
        SKIPPED=$((SKIPPED + 1))
        continue
    fi
    if [ "$MODE" = direct ] && [ "$s" = n-call ]; then
        echo "SKIP $s (direct mode: riptide call needs the gateway pair)"
        SKIPPED=$((SKIPPED + 1))
        continue
    fi
    if [ "$MODE" = direct ] && [ "$s" = i-malformed ]; then
        echo "SKIP $s (direct mode: needs the gateway's 400 and metrics)"
        SKIPPED=$((SKIPPED + 1))
        continue
    fi
    DETAIL=""
    start=$(date +%s.%N)
    if "scn_${s%%-*}" "$dir"; then
        res=PASS; PASSED=$((PASSED + 1))
    else
        res=FAIL; FAILED=$((FAILED + 1))
    fi
    printf '%s %s (%ss, %s) %s\n' "$res" "$s" "$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')" "$MODE" "$DETAIL"
done

if [ "$SKIPPED" -gt 0 ]; then
    echo "sipp: $PASSED passed, $FAILED failed, $SKIPPED skipped"
else
    echo "sipp: $PASSED passed, $FAILED failed"
fi
[ "$FAILED" = 0 ]
