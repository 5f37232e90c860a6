#!/usr/bin/env bash
# Call-setup rate benchmark through the gateway pair (see interop/README.md).
#
#   interop/bench/cps.sh RATE SECONDS [--direct] [--keep-pair]
#
# SIPp UAC (interop/sipp/scenarios/call_uac.xml: INVITE/200/ACK, 1 s hold, BYE; SDP but no RTP)
# places RATE calls per second for SECONDS seconds (-r RATE -rp 1000 -m RATE*SECONDS) toward
# gateway A (127.0.0.1:5070); a SIPp UAS on 127.0.0.1:5080 answers behind gateway B.
# --direct sends to the UAS with no gateway (baseline of SIPp itself).
# Prints `rate=<R> successful=<S> failed=<F>` (F = attempted - successful, so calls still
# unfinished when SIPp's -timeout hit count as failed) and the elapsed time.
# Starts the pair if it is not running (and stops it again unless --keep-pair).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/..
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib/common.sh"

usage() { sed -n '2,14p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
RATE="$1"; SECS="$2"; shift 2
[[ "$RATE" =~ ^[1-9][0-9]*$ ]] || die "RATE must be a positive integer"
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || die "SECONDS must be a positive integer"
MODE=pair; KEEP_PAIR=0
for a in "$@"; do
    case "$a" in
        --direct) MODE=direct ;;
        --keep-pair) KEEP_PAIR=1 ;;
        *) usage ;;
    esac
done

need_cmd sipp sip-tester
need_cmd ss iproute2
need_cmd curl curl
need_cmd timeout coreutils

SCN="$INTEROP_DIR/sipp/scenarios"
DIR="$OUT_DIR/bench/cps"
TOTAL=$((RATE * SECS))
HOLD_MS=1000
LIMIT=$((RATE * 10 + 10))            # concurrent calls allowed (hold 1 s, so ~RATE are open)
RUN_TIMEOUT=$((SECS + 30))           # SIPp -timeout for the UAC, seconds
if [ "$MODE" = pair ]; then TARGET=127.0.0.1:5070; else TARGET=127.0.0.1:5080; fi

UAS_PID=""
cleanup() {
    [ -z "$UAS_PID" ] || stop_pid "$UAS_PID" 3
    [ "$KEEP_PAIR" = 1 ] || pair_release
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$MODE" != pair ] || pair_acquire

rm -rf "$DIR"; mkdir -p "$DIR"
port_bound udp 5080 && die "127.0.0.1:5080 is already in use: $(port_users udp 5080)"
(cd "$DIR" && exec timeout -k 5 $((RUN_TIMEOUT + 30)) sipp -sf "$SCN/call_uas.xml" -i 127.0.0.1 -p 5080 \
    -mi 127.0.0.1 -mp 17000 -cp 8890 -aa -nostdin -max_socket 4096 -timeout $((RUN_TIMEOUT + 20))s \
    -trace_err -trace_screen) >"$DIR/uas.stdout" 2>&1 &
UAS_PID=$!
wait_port_bound udp 5080 10 "$UAS_PID" || die "SIPp UAS did not bind 127.0.0.1:5080: $(tail -n 5 "$DIR/uas.stdout")"

log "cps: $TOTAL calls at $RATE/s toward $TARGET ($MODE), hold ${HOLD_MS} ms"
start=$(date +%s.%N)
uac_rc=0
(cd "$DIR" && exec timeout -k 5 $((RUN_TIMEOUT + 10)) sipp "$TARGET" -sf "$SCN/call_uac.xml" -s answer \
    -i 127.0.0.1 -p 5090 -mi 127.0.0.1 -mp 16000 -cp 8891 -nostdin \
    -r "$RATE" -rp 1000 -m "$TOTAL" -l "$LIMIT" -d "$HOLD_MS" -max_socket 4096 \
    -timeout "${RUN_TIMEOUT}s" -recv_timeout 10s \
    -trace_stat -stf "$DIR/uac_stats.csv" -fd 1 -trace_err -trace_screen) >"$DIR/uac.stdout" 2>&1 || uac_rc=$?
end=$(date +%s.%N)

# Last row of SIPp's statistics CSV: cumulative counters by column name.
read -r successful sipp_failed < <(awk -F';' '
    NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "SuccessfulCall(C)") s = i; if ($i == "FailedCall(C)") f = i } next }
    { last_s = $s; last_f = $f }
    END { print last_s + 0, last_f + 0 }' "$DIR/uac_stats.csv" 2>/dev/null || echo "0 0")
failed=$((TOTAL - successful))
elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
echo "rate=$RATE successful=$successful failed=$failed"
echo "elapsed=${elapsed}s attempted=$TOTAL sipp_failed_counter=$sipp_failed sipp_exit=$uac_rc mode=$MODE target=$TARGET"
echo "how: counts from SIPp's -trace_stat CSV (SuccessfulCall(C), FailedCall(C)); failed = attempted - successful; logs in $DIR"
