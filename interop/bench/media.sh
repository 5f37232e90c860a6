#!/usr/bin/env bash
# Media relay benchmark through the gateway pair (see interop/README.md).
#
#   interop/bench/media.sh CALLS [--gen sipp|rtpload] [--sdes] [--hold SECONDS] [--direct] [--keep-pair]
#   interop/bench/media.sh --compare CALLS [--hold SECONDS]
#
# CALLS concurrent calls (all started within 1 s), each with G.711 PCMU RTP both ways at 50 pkt/s,
# UAC toward gateway A 127.0.0.1:5070, UAS on 127.0.0.1:5080 behind gateway B, held ~20 s. The
# streams stop 1 s before the BYE so teardown is not counted as loss.
# --gen sipp (default): SIPp rtp_stream (media_uac.xml/media_uas.xml), plain RTP only.
# --gen rtpload: examples/rtpload.rs (built with cargo when missing or stale); the pair is started
#   with generated configs (interop/out/bench/media/<mode>/config) whose legacy legs are pinned to
#   [media] security = "rtp", in a private network namespace when unshare --net is permitted.
# --sdes: the same with security = "sdes" on both gateways' legacy legs and SDES-SRTP
#   (AES_CM_128_HMAC_SHA1_80) in rtpload (implies --gen rtpload).
# --compare CALLS: plain (rtpload, security "rtp") then SDES back to back, one table.
# Prints, with how each number was obtained:
#   per gateway  cpu_us_per_packet=<x>  = (utime+stime delta from /proc/PID/stat, in us) /
#                (riptide_media_packets_relayed_total delta, both dirs, from /metrics)
#   overall      packets_lost=<sent-received>  (RTP counted in a tcpdump capture on lo:
#                sent = from the SIPp media ports / to the gateways' media ranges (rtpload),
#                received = to the SIPp media ports / from the gateways' media ranges (rtpload))
#   rtpload also: the generators' own counts and one-way latency p50/p99, SRTP auth failures, and
#   each gateway's riptide_media_packets_dropped_total delta by reason.
# --direct: UAC straight to UAS with no gateway (checks the measuring itself; cpu figures are n/a).
# MEDIA_RIPTIDE=PATH runs the gateways through a wrapper instead of target/release/riptide (a
#   script that execs heaptrack or perf on `riptide serve`); its CPU figures are then the wrapper's.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/..
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib/common.sh"

usage() { sed -n '2,25p' "$0" >&2; exit 2; }
SELF="$INTEROP_DIR/bench/media.sh"
RTPLOAD="$REPO_ROOT/target/release/examples/rtpload"
# MEDIA_RIPTIDE runs the gateways through a wrapper (heaptrack, perf) instead of the binary.
RIPTIDE="${MEDIA_RIPTIDE:-$REPO_ROOT/target/release/riptide}"

# cpu_us PID: utime+stime of PID in microseconds (fields 14 and 15 of /proc/PID/stat, after the comm).
cpu_us() {
    local stat rest tck
    stat="$(cat "/proc/$1/stat")" || die "cannot read /proc/$1/stat"
    rest="${stat##*) }"
    tck="$(getconf CLK_TCK)"
    # after "comm) " the fields start at field 3, so utime/stime are the 12th and 13th words
    awk -v t="$tck" '{ printf "%.0f\n", ($12 + $13) * 1000000 / t }' <<<"$rest"
}
admin() { if [ "$1" = a ]; then echo http://127.0.0.1:9070/metrics; else echo http://127.0.0.1:9072/metrics; fi; }
relayed() { metric_sum "$(admin "$1")" riptide_media_packets_relayed_total "${2:-}"; }

# ================================================================================================
# rtpload modes
# ================================================================================================

# kv LINE KEY: the value of KEY in a line of key=value words (empty when absent).
kv() { awk -v k="$2" '{ for (i = 1; i <= NF; i++) { n = index($i, "="); if (substr($i, 1, n - 1) == k) { print substr($i, n + 1); exit } } }' <<<"$1"; }

# dropped_by_reason GW: "reason value" lines of riptide_media_packets_dropped_total.
dropped_by_reason() {
    curl -fsS --max-time 3 "$(admin "$1")" 2>/dev/null | awk '
        /^riptide_media_packets_dropped_total\{/ {
            if (match($1, /reason="[^"]*"/)) print substr($1, RSTART + 8, RLENGTH - 9), $NF
        }' || true
}

# drop_delta BEFORE AFTER: "reason=delta ..." for the reasons that moved, or "none".
drop_delta() {
    awk 'NR == FNR { b[$1] = $2; next } { d = $2 - b[$1]; if (d != 0) { printf "%s%s=%.0f", sep, $1, d; sep = " " } any = 1 }
         END { if (sep == "") print (any ? "none" : "n/a (metric not found)"); else print "" }' "$1" "$2"
}

# capture_drops STDERR: tcpdump's own count of packets it dropped, as it printed it.
capture_drops() { grep -Eo '[0-9]+ packets dropped by kernel' "$1" || echo 'unknown'; }

# warn_capture_drops DROPS: a loss figure is only as good as the capture that counted it.
warn_capture_drops() {
    [ "$1" = "0 packets dropped by kernel" ] \
        || echo "warning: the capture itself dropped packets or could not say; packets_lost is not reliable"
}

# write_configs SECURITY D: copies of config/pair-{a,b}.toml in D/config with absolute paths and
# `security = SECURITY` on every legacy leg (A's inbound leg from the UAC uses A's [media], B's leg
# toward the UAS is B's [[sip_trunk]]), made by lib/pairconf.py as for the baresip run.
write_configs() {
    local security="$1" d="$2"
    mkdir -p "$d/config" "$d/data" "$d/pair"
    python3 "$INTEROP_DIR/lib/pairconf.py" "$REPO_ROOT/config" "$d/config" --data-root "$d/data" \
        --token-file "$d/pair/a-to-b.token" --set "security=\"$security\"" >/dev/null
    local g err
    for g in a b; do
        err="$("$RIPTIDE" check-config "$d/config/pair-$g.toml" 2>&1 >/dev/null)" \
            || die "gateway rejects $d/config/pair-$g.toml (riptide check-config): $err"
    done
}

# wire_sizes PCAP: the UDP payload sizes of the RTP/SRTP packets (not RTCP) in the capture, most
# frequent first: plain PCMU is 172 B, SRTP AES_CM_128_HMAC_SHA1_80 adds a 10-byte tag (182 B).
wire_sizes() {
    python3 - "$1" "$INTEROP_DIR/lib" <<'PY'
import collections, sys
sys.path.insert(0, sys.argv[2])
from rtpcount import is_rtp, udp_records
# The capture may be cut at its snap length: the size is the one the UDP header states.
sizes = collections.Counter(n for *_, p, n in udp_records(sys.argv[1]) if is_rtp(p))
top = sizes.most_common(3)
rest = sum(sizes.values()) - sum(n for _, n in top)
print(" ".join(f"{size}B x{n}" for size, n in top) + (f" other x{rest}" if rest else "") if top else "none")
PY
}

# build_rtpload: cargo build the example when it is missing or older than what it is made of.
build_rtpload() {
    local newer=""
    if [ -x "$RTPLOAD" ]; then
        newer="$(find "$REPO_ROOT/examples/rtpload.rs" "$REPO_ROOT/src/media/srtp.rs" "$REPO_ROOT/src/sip/msg.rs" \
            "$REPO_ROOT/Cargo.toml" "$REPO_ROOT/Cargo.lock" -newer "$RTPLOAD" -print -quit 2>/dev/null || true)"
        [ -n "$newer" ] || return 0
        log "rtpload is older than $newer: rebuilding"
    else
        log "building rtpload (cargo build --release --locked --example rtpload)"
    fi
    mkdir -p "$OUT_DIR"
    (cd "$REPO_ROOT" && cargo build --release --locked --example rtpload) >"$OUT_DIR/build-rtpload.log" 2>&1 || {
        tail -n 40 "$OUT_DIR/build-rtpload.log" >&2
        die "cargo build --release --example rtpload failed (full log: $OUT_DIR/build-rtpload.log)"
    }
}

# rtpload_inner MODE CALLS HOLD DIRECT: one measured run (the pair, the capture, both generators),
# run in the private network namespace when there is one. Prints its report and writes
# $DIR/$MODE/result (key=value lines) for the table.
rtpload_inner() {
    local mode="$1" calls="$2" hold="$3" direct="$4"
    local d="$OUT_DIR/bench/media/$mode" security srtp=() target=127.0.0.1:5070
    case "$mode" in
        rtp) security=rtp ;;
        sdes) security=sdes; srtp=(--srtp) ;;
        *) die "unknown mode $mode" ;;
    esac
    [ "$direct" = 0 ] || target=127.0.0.1:5080
    local run_timeout=$((hold + 40))
    export PAIR_CONFIG_DIR="$d/config" PAIR_OUT_DIR="$d/pair" RIPTIDE_BIN="$RIPTIDE"
    UAS_PID=""; CAPTURE_PID=""; PAIR_UP=0
    # shellcheck disable=SC2317,SC2329 # called by the EXIT trap
    inner_cleanup() {
        [ -z "$UAS_PID" ] || stop_pid "$UAS_PID" 3
        stop_capture
        [ "$PAIR_UP" = 0 ] || "$INTEROP_DIR/pair.sh" stop >/dev/null 2>&1 || true
    }
    trap inner_cleanup EXIT
    trap 'exit 143' INT TERM

    if [ "${MEDIA_IN_NETNS:-0}" = 1 ]; then
        ip link set lo up
    fi
    local spec proto port
    for spec in udp:5080 udp:5090; do
        proto="${spec%%:*}"; port="${spec##*:}"
        ! port_bound "$proto" "$port" || die "127.0.0.1:$port/$proto is in use: $(port_users "$proto" "$port")"
    done

    local g
    declare -A CPU0 REL0 S2Q0 Q2S0 PID
    if [ "$direct" = 0 ]; then
        write_configs "$security" "$d"
        PAIR_UP=1
        "$INTEROP_DIR/pair.sh" start >"$d/pair-start.log" 2>&1 || { cat "$d/pair-start.log" >&2; die "could not start the pair (logs in $d/pair)"; }
        for g in a b; do
            PID[$g]="$(cat "$d/pair/$g.pid")"
            CPU0[$g]="$(cpu_us "${PID[$g]}")"
            REL0[$g]="$(relayed "$g")"
            S2Q0[$g]="$(relayed "$g" 'dir="sip_to_quic"')"
            Q2S0[$g]="$(relayed "$g" 'dir="quic_to_sip"')"
            dropped_by_reason "$g" >"$d/dropped-$g.before"
        done
        # Legacy media only: UAC <-> A's range 20000-24999, UAS <-> B's range 25000-29999 (the
        # gateways talk to each other over QUIC on 4433/4434, the generators use ephemeral ports).
        CAPTURE_SNAPLEN=64 start_capture "$d/rtp.pcap" "udp and portrange 20000-29999"
    fi

    # The UAS stops its streams HOLD - 0.5 s after each ACK, the UAC at HOLD s after the 200 and
    # sends the BYE 1 s later (as the SIPp scenarios do).
    "$RTPLOAD" uas --sip 127.0.0.1:5080 --media-ip 127.0.0.1 "${srtp[@]}" --calls "$calls" \
        --send-for "$(awk -v h="$hold" 'BEGIN { print h - 0.5 }')" --timeout $((run_timeout + 20)) \
        >"$d/uas.stdout" 2>"$d/uas.stderr" &
    UAS_PID=$!
    wait_port_bound udp 5080 10 "$UAS_PID" || die "rtpload uas did not bind 127.0.0.1:5080: $(tail -n 5 "$d/uas.stderr")"

    log "media ($mode, rtpload): $calls concurrent calls toward $target, RTP both ways for ${hold}s"
    local uac_rc=0 uas_rc=0
    timeout -k 5 $((run_timeout + 10)) "$RTPLOAD" uac --target "$target" --sip 127.0.0.1:5090 --media-ip 127.0.0.1 \
        "${srtp[@]}" --calls "$calls" --hold "$hold" --timeout "$run_timeout" \
        >"$d/uac.stdout" 2>"$d/uac.stderr" || uac_rc=$?
    wait_pid_exit "$UAS_PID" 15 || stop_pid "$UAS_PID" 3
    wait "$UAS_PID" 2>/dev/null || uas_rc=$?
    UAS_PID=""
    stop_capture

    local uac uas
    uac="$(grep '^role=uac' "$d/uac.stdout" || true)"; uas="$(grep '^role=uas' "$d/uas.stdout" || true)"
    [ -n "$uac" ] || { tail -n 5 "$d/uac.stderr" >&2; die "rtpload uac printed no figures (exit $uac_rc; $d/uac.stderr)"; }
    [ -n "$uas" ] || { tail -n 5 "$d/uas.stderr" >&2; die "rtpload uas printed no figures (exit $uas_rc; $d/uas.stderr)"; }
    local ok what="plain RTP"
    ok="$(kv "$uac" calls_ok)"
    [ "$mode" = rtp ] || what="SDES-SRTP AES_CM_128_HMAC_SHA1_80"
    local legs="gateways' legacy legs security=\"$security\""
    [ "$direct" = 0 ] || legs="direct: no gateways"
    echo "== mode $mode ($what; $legs; network: $NETWORK) =="
    echo "calls: $ok of $calls successful (rtpload uac calls_ok; uas calls_ok=$(kv "$uas" calls_ok)); uac exit=$uac_rc uas exit=$uas_rc"
    grep -h 'call(s) failed' "$d/uac.stderr" "$d/uas.stderr" | sed 's/^/  /' || true

    local res="$d/result" cpu_a=n/a cpu_b=n/a
    {
        echo "mode=$mode"; echo "calls=$calls"; echo "calls_ok=$ok"
    } >"$res"
    if [ "$direct" = 0 ]; then
        local cpu1 rel1 s2q q2s dcpu drel per
        for g in a b; do
            if [ "$(cat "$d/pair/$g.pid" 2>/dev/null)" != "${PID[$g]}" ] || ! kill -0 "${PID[$g]}" 2>/dev/null; then
                echo "gateway $g: cpu_us_per_packet=n/a (the gateway exited or was restarted during the run; log $d/pair/$g.log)"
                continue
            fi
            cpu1="$(cpu_us "${PID[$g]}")"; rel1="$(relayed "$g")"
            s2q=$(( $(relayed "$g" 'dir="sip_to_quic"') - S2Q0[$g] )); q2s=$(( $(relayed "$g" 'dir="quic_to_sip"') - Q2S0[$g] ))
            dcpu=$((cpu1 - CPU0[$g])); drel=$((rel1 - REL0[$g]))
            if [ "$drel" -gt 0 ]; then
                per="$(awk -v c="$dcpu" -v p="$drel" 'BEGIN { printf "%.2f", c / p }')"
            else
                per="n/a"
            fi
            echo "gateway $g: cpu_us_per_packet=$per (cpu_us=$dcpu from /proc/${PID[$g]}/stat utime+stime delta; packets=$drel from riptide_media_packets_relayed_total delta: sip_to_quic=$s2q quic_to_sip=$q2s; cpu includes SIP/HTTP3 signalling of the calls)"
            dropped_by_reason "$g" >"$d/dropped-$g.after"
            echo "gateway $g: media_packets_dropped delta by reason: $(drop_delta "$d/dropped-$g.before" "$d/dropped-$g.after")"
            if [ "$g" = a ]; then cpu_a="$per"; else cpu_b="$per"; fi
        done
        local counts sent recv drops
        counts="$(python3 "$INTEROP_DIR/lib/rtpcount.py" "$d/rtp.pcap" \
            "to_a,dst=20000-24999" "to_b,dst=25000-29999" "from_a,src=20000-24999" "from_b,src=25000-29999")"
        get() { sed -n "s/^$1=//p" <<<"$counts"; }
        sent=$(( $(get to_a) + $(get to_b) )); recv=$(( $(get from_a) + $(get from_b) ))
        drops="$(capture_drops "$d/rtp.pcap.stderr")"
        echo "packets_lost=$((sent - recv)) (sent=$sent: UAC->A $(get to_a) + UAS->B $(get to_b) RTP/SRTP packets into the gateways' media ranges; received=$recv: A->UAC $(get from_a) + B->UAS $(get from_b) out of them; tcpdump -i lo capture, $drops)"
        warn_capture_drops "$drops"
        echo "wire: RTP/SRTP payload sizes in the capture: $(wire_sizes "$d/rtp.pcap") (plain PCMU 172 B; SRTP _80 182 B)"
        { echo "cap_lost=$((sent - recv))"; echo "cap_sent=$sent"; } >>"$res"
    else
        echo "gateway a: cpu_us_per_packet=n/a (direct mode: no gateway)"
        echo "gateway b: cpu_us_per_packet=n/a (direct mode: no gateway)"
        echo "packets_lost (capture): n/a in direct mode (no gateway port ranges to count by)"
        { echo "cap_lost=n/a"; echo "cap_sent=n/a"; } >>"$res"
    fi
    local gsent grecv
    gsent=$(( $(kv "$uac" packets_sent) + $(kv "$uas" packets_sent) ))
    grecv=$(( $(kv "$uac" packets_received) + $(kv "$uas" packets_received) ))
    echo "generators: lost=$((gsent - grecv)) (sent=$gsent: uac $(kv "$uac" packets_sent) + uas $(kv "$uas" packets_sent); received and authenticated=$grecv: uac $(kv "$uac" packets_received) + uas $(kv "$uas" packets_received)); srtp_auth_failures uac=$(kv "$uac" srtp_auth_failures) uas=$(kv "$uas" srtp_auth_failures); send_errors uac=$(kv "$uac" send_errors) uas=$(kv "$uas" send_errors)"
    echo "latency one-way (payload send time vs receive time, wall clock): to UAC p50=$(kv "$uac" latency_p50_us) p99=$(kv "$uac" latency_p99_us) us; to UAS p50=$(kv "$uas" latency_p50_us) p99=$(kv "$uas" latency_p99_us) us"
    echo "rtpload uac: $uac"
    echo "rtpload uas: $uas"
    {
        echo "cpu_a=$cpu_a"; echo "cpu_b=$cpu_b"
        echo "gen_lost=$((gsent - grecv))"; echo "gen_sent=$gsent"
        echo "auth_fail=$(( $(kv "$uac" srtp_auth_failures) + $(kv "$uas" srtp_auth_failures) ))"
        echo "p50=$(kv "$uac" latency_p50_us)/$(kv "$uas" latency_p50_us)"
        echo "p99=$(kv "$uac" latency_p99_us)/$(kv "$uas" latency_p99_us)"
    } >>"$res"
}

# run_rtpload_mode MODE CALLS HOLD DIRECT: rtpload_inner in its own network namespace (so the
# pair's ports never collide with another pair or SIPp on the host, and the capture sees only this
# run), or on the host's loopback when unshare is not permitted.
run_rtpload_mode() {
    local mode="$1" calls="$2" hold="$3" direct="$4" d="$OUT_DIR/bench/media/$1"
    rm -rf "$d"; mkdir -p "$d"
    if unshare --net true 2>/dev/null; then
        MEDIA_IN_NETNS=1 NETWORK="private namespace (unshare --net)" timeout -k 5 $((hold + 180)) \
            unshare --net -- bash "$SELF" --inner "$mode" "$calls" "$hold" "$direct"
    else
        log "unshare --net is not permitted here: running on the host loopback (ports 5070/5072/5080/5090, 4433/4434, 9070/9072 must be free)"
        MEDIA_IN_NETNS=0 NETWORK="host loopback" timeout -k 5 $((hold + 180)) \
            bash "$SELF" --inner "$mode" "$calls" "$hold" "$direct"
    fi
}

# table MODE...: one row per mode from its result file (plus the sdes/rtp ratio when both ran).
table() {
    local m f
    printf '%-5s %6s %13s %13s %22s %22s %9s %15s %15s\n' mode calls cpu_us/pkt_A cpu_us/pkt_B \
        lost_capture lost_generators srtp_fail p50_us_uac/uas p99_us_uac/uas
    for m in "$@"; do
        f="$OUT_DIR/bench/media/$m/result"
        [ -f "$f" ] || { printf '%-5s (no result: the run failed, see %s)\n' "$m" "$(dirname "$f")"; continue; }
        r() { sed -n "s/^$1=//p" "$f"; }
        printf '%-5s %6s %13s %13s %22s %22s %9s %15s %15s\n' "$m" "$(r calls_ok)/$(r calls)" "$(r cpu_a)" "$(r cpu_b)" \
            "$(r cap_lost) of $(r cap_sent)" "$(r gen_lost) of $(r gen_sent)" "$(r auth_fail)" "$(r p50)" "$(r p99)"
    done
    if [ "$#" = 2 ] && [ -f "$OUT_DIR/bench/media/rtp/result" ] && [ -f "$OUT_DIR/bench/media/sdes/result" ]; then
        ratio() {
            local p s
            p="$(sed -n "s/^$1=//p" "$OUT_DIR/bench/media/rtp/result")"; s="$(sed -n "s/^$1=//p" "$OUT_DIR/bench/media/sdes/result")"
            awk -v p="$p" -v s="$s" 'BEGIN { if (p + 0 > 0 && s + 0 > 0) printf "%.2fx", s / p; else print "n/a" }'
        }
        printf '%-5s %6s %13s %13s\n' sdes/rtp "" "$(ratio cpu_a)" "$(ratio cpu_b)"
    fi
}

# ================================================================================================
# argument handling
# ================================================================================================

if [ "${1:-}" = --inner ]; then
    shift
    [ $# = 4 ] || die "--inner MODE CALLS HOLD DIRECT"
    need_cmd ip iproute2
    rtpload_inner "$@"
    exit 0
fi

[ $# -ge 1 ] || usage
COMPARE=0
if [ "$1" = --compare ]; then COMPARE=1; shift; [ $# -ge 1 ] || usage; fi
CALLS="$1"; shift
[[ "$CALLS" =~ ^[1-9][0-9]*$ ]] || die "CALLS must be a positive integer"
MODE=pair; KEEP_PAIR=0; HOLD=20; GEN=""; SDES=0
while [ $# -gt 0 ]; do
    case "$1" in
        --direct) MODE=direct ;;
        --keep-pair) KEEP_PAIR=1 ;;
        --hold) HOLD="${2:?}"; shift ;;
        --gen) GEN="${2:?}"; shift ;;
        --sdes) SDES=1 ;;
        *) usage ;;
    esac
    shift
done
[[ "$HOLD" =~ ^[1-9][0-9]*$ ]] || die "--hold must be a positive integer (seconds)"
case "$GEN" in ""|sipp|rtpload) ;; *) die "--gen must be sipp or rtpload" ;; esac
if [ "$SDES" = 1 ] || [ "$COMPARE" = 1 ]; then
    # SIPp 3.6.1 cannot do SRTP: --sdes and --compare need rtpload.
    [ "$GEN" != sipp ] || die "--sdes and --compare need --gen rtpload (SIPp cannot do SRTP)"
    GEN=rtpload
fi
GEN="${GEN:-sipp}"

if [ "$GEN" = rtpload ]; then
    [ "$KEEP_PAIR" = 0 ] || die "--keep-pair does not apply to --gen rtpload: it starts its own pair with generated configs"
    need_cmd ss iproute2
    need_cmd ip iproute2
    need_cmd curl curl
    need_cmd timeout coreutils
    need_cmd python3 python3
    need_cmd tcpdump tcpdump
    need_cmd unshare util-linux
    DIRECT=0; [ "$MODE" = pair ] || DIRECT=1
    # Build on the host: the namespace has no network (cargo may need the registry).
    [ "$DIRECT" = 1 ] || "$INTEROP_DIR/pair.sh" build
    build_rtpload
    if [ "$COMPARE" = 1 ]; then MODES=(rtp sdes); elif [ "$SDES" = 1 ]; then MODES=(sdes); else MODES=(rtp); fi
    rc=0
    for m in "${MODES[@]}"; do
        run_rtpload_mode "$m" "$CALLS" "$HOLD" "$DIRECT" || rc=1
        if [ "$(sed -n 's/^calls_ok=//p' "$OUT_DIR/bench/media/$m/result" 2>/dev/null)" != "$CALLS" ]; then rc=1; fi
    done
    echo
    echo "media.sh: $CALLS calls, hold ${HOLD}s, rtpload, modes: ${MODES[*]} (one invocation, back to back; logs in $OUT_DIR/bench/media/<mode>/)"
    table "${MODES[@]}"
    [ "$rc" = 0 ] || echo "warning: not every call succeeded or a run failed; see $OUT_DIR/bench/media/<mode>/"
    exit "$rc"
fi

# ================================================================================================
# --gen sipp (the original benchmark, unchanged)
# ================================================================================================

need_cmd sipp sip-tester
need_cmd ss iproute2
need_cmd curl curl
need_cmd timeout coreutils
need_cmd python3 python3
need_cmd tcpdump tcpdump

SCN="$INTEROP_DIR/sipp/scenarios"
DIR="$OUT_DIR/bench/media"
UAC_MEDIA=16000; UAS_MEDIA=17000
RUN_TIMEOUT=$((HOLD + 40))
if [ "$MODE" = pair ]; then TARGET=127.0.0.1:5070; else TARGET=127.0.0.1:5080; fi

UAS_PID=""; CAPTURE_PID=""
cleanup() {
    [ -z "$UAS_PID" ] || stop_pid "$UAS_PID" 3
    stop_capture
    [ "$KEEP_PAIR" = 1 ] || pair_release
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$MODE" != pair ] || pair_acquire

rm -rf "$DIR"; mkdir -p "$DIR"
(cd "$DIR" && python3 "$INTEROP_DIR/lib/mktone.py" tone-440hz.ulaw 2)

gw_pid() { cat "$OUT_DIR/$1.pid"; }

declare -A CPU0 REL0 S2Q0 Q2S0
PIDS0="$(pair_pids)"
if [ "$MODE" = pair ]; then
    for g in a b; do
        CPU0[$g]="$(cpu_us "$(gw_pid "$g")")"
        REL0[$g]="$(relayed "$g")"
        S2Q0[$g]="$(relayed "$g" 'dir="sip_to_quic"')"
        Q2S0[$g]="$(relayed "$g" 'dir="quic_to_sip"')"
    done
fi

port_bound udp 5080 && die "127.0.0.1:5080 is already in use: $(port_users udp 5080)"
CAPTURE_SNAPLEN=64 start_capture "$DIR/rtp.pcap" "udp and (port $UAC_MEDIA or port $UAS_MEDIA)"

# The UAS stops its streams at (HOLD - 0.5) s, the UAC at HOLD s, then drains 1 s before the BYE.
(cd "$DIR" && exec timeout -k 5 $((RUN_TIMEOUT + 20)) sipp -sf "$SCN/media_uas.xml" -i 127.0.0.1 -p 5080 \
    -mi 127.0.0.1 -mp "$UAS_MEDIA" -cp 8890 -aa -nostdin -m "$CALLS" -d $((HOLD * 1000 - 500)) \
    -timeout "$((RUN_TIMEOUT + 10))s" -trace_err -trace_screen) >"$DIR/uas.stdout" 2>&1 &
UAS_PID=$!
wait_port_bound udp 5080 10 "$UAS_PID" || die "SIPp UAS did not bind 127.0.0.1:5080: $(tail -n 5 "$DIR/uas.stdout")"

log "media: $CALLS concurrent calls toward $TARGET ($MODE), RTP both ways for ${HOLD}s"
uac_rc=0
(cd "$DIR" && exec timeout -k 5 $((RUN_TIMEOUT + 10)) sipp "$TARGET" -sf "$SCN/media_uac.xml" -s answer \
    -i 127.0.0.1 -p 5090 -mi 127.0.0.1 -mp "$UAC_MEDIA" -cp 8891 -nostdin \
    -r "$CALLS" -rp 1000 -m "$CALLS" -l "$CALLS" -d $((HOLD * 1000)) \
    -timeout "${RUN_TIMEOUT}s" -recv_timeout 15s -trace_stat -stf "$DIR/uac_stats.csv" -fd 1 \
    -trace_err -trace_screen) >"$DIR/uac.stdout" 2>&1 || uac_rc=$?
uas_rc=0
wait_pid_exit "$UAS_PID" 15 || stop_pid "$UAS_PID" 3
wait "$UAS_PID" 2>/dev/null || uas_rc=$?
UAS_PID=""
stop_capture

read -r successful < <(awk -F';' '
    NR == 1 { for (i = 1; i <= NF; i++) if ($i == "SuccessfulCall(C)") s = i; next }
    { last = $s } END { print last + 0 }' "$DIR/uac_stats.csv" 2>/dev/null || echo 0)
echo "calls: $successful of $CALLS successful (SIPp -trace_stat SuccessfulCall(C)); uac exit=$uac_rc uas exit=$uas_rc"

if [ "$MODE" = pair ] && [ "$(pair_pids)" != "$PIDS0" ]; then
    echo "gateway a: cpu_us_per_packet=n/a (the pair was restarted during the run: pids $PIDS0-> $(pair_pids))"
    echo "gateway b: cpu_us_per_packet=n/a (the pair was restarted during the run)"
elif [ "$MODE" = pair ]; then
    for g in a b; do
        cpu1="$(cpu_us "$(gw_pid "$g")")"; rel1="$(relayed "$g")"
        s2q=$(( $(relayed "$g" 'dir="sip_to_quic"') - S2Q0[$g] )); q2s=$(( $(relayed "$g" 'dir="quic_to_sip"') - Q2S0[$g] ))
        dcpu=$((cpu1 - CPU0[$g])); drel=$((rel1 - REL0[$g]))
        if [ "$drel" -gt 0 ]; then
            per="$(awk -v c="$dcpu" -v p="$drel" 'BEGIN { printf "%.2f", c / p }')"
        else
            per="n/a"
        fi
        echo "gateway $g: cpu_us_per_packet=$per (cpu_us=$dcpu from /proc/$(gw_pid "$g")/stat utime+stime delta; packets=$drel from riptide_media_packets_relayed_total delta: sip_to_quic=$s2q quic_to_sip=$q2s; cpu includes SIP/HTTP3 signalling of the calls)"
    done
else
    echo "gateway a: cpu_us_per_packet=n/a (direct mode: no gateway)"
    echo "gateway b: cpu_us_per_packet=n/a (direct mode: no gateway)"
fi

counts="$(python3 "$INTEROP_DIR/lib/rtpcount.py" "$DIR/rtp.pcap" \
    "sent_uac,src=$UAC_MEDIA" "sent_uas,src=$UAS_MEDIA" "recv_uac,dst=$UAC_MEDIA" "recv_uas,dst=$UAS_MEDIA")"
get() { sed -n "s/^$1=//p" <<<"$counts"; }
sent=$(( $(get sent_uac) + $(get sent_uas) )); recv=$(( $(get recv_uac) + $(get recv_uas) ))
drops="$(capture_drops "$DIR/rtp.pcap.stderr")"
echo "packets_lost=$((sent - recv)) (sent=$sent: UAC $(get sent_uac) + UAS $(get sent_uas) RTP packets from the SIPp media ports; received=$recv: UAC $(get recv_uac) + UAS $(get recv_uas) to them; tcpdump -i lo capture, $drops)"
warn_capture_drops "$drops"
[ "$successful" = "$CALLS" ] || { echo "warning: not every call succeeded; see $DIR"; exit 1; }
