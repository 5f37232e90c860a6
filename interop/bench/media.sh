#!/usr/bin/env bash
# Media relay benchmark through the gateway pair (see interop/README.md).
#
#   interop/bench/media.sh CALLS [--hold SECONDS] [--direct] [--keep-pair]
#
# CALLS concurrent calls (all started within 1 s), each with G.711 PCMU RTP both ways at 50 pkt/s
# (SIPp rtp_stream: media_uac.xml toward gateway A 127.0.0.1:5070, media_uas.xml on 127.0.0.1:5080
# behind gateway B), held ~20 s. The streams stop 1 s before the BYE so teardown is not counted as loss.
# Prints, with how each number was obtained:
#   per gateway  cpu_us_per_packet=<x>  = (utime+stime delta from /proc/PID/stat, in us) /
#                (riptide_media_packets_relayed_total delta, both dirs, from /metrics)
#   overall      packets_lost=<sent-received>  (RTP counted in a tcpdump capture on lo:
#                sent = from the SIPp media ports, received = to the SIPp media ports)
# --direct: SIPp to SIPp with no gateway (checks the measuring itself; cpu figures are n/a).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/..
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib/common.sh"

usage() { sed -n '2,16p' "$0" >&2; exit 2; }
[ $# -ge 1 ] || usage
CALLS="$1"; shift
[[ "$CALLS" =~ ^[1-9][0-9]*$ ]] || die "CALLS must be a positive integer"
MODE=pair; KEEP_PAIR=0; HOLD=20
while [ $# -gt 0 ]; do
    case "$1" in
        --direct) MODE=direct ;;
        --keep-pair) KEEP_PAIR=1 ;;
        --hold) HOLD="${2:?}"; shift ;;
        *) usage ;;
    esac
    shift
done
[[ "$HOLD" =~ ^[1-9][0-9]*$ ]] || die "--hold must be a positive integer (seconds)"

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

# cpu_us PID: utime+stime of PID in microseconds (fields 14 and 15 of /proc/PID/stat, after the comm).
cpu_us() {
    local stat rest tck
    stat="$(cat "/proc/$1/stat")" || die "cannot read /proc/$1/stat"
    rest="${stat##*) }"
    tck="$(getconf CLK_TCK)"
    # after "comm) " the fields start at field 3, so utime/stime are the 12th and 13th words
    awk -v t="$tck" '{ printf "%.0f\n", ($12 + $13) * 1000000 / t }' <<<"$rest"
}
gw_pid() { cat "$OUT_DIR/$1.pid"; }
admin() { if [ "$1" = a ]; then echo http://127.0.0.1:9070/metrics; else echo http://127.0.0.1:9072/metrics; fi; }
relayed() { metric_sum "$(admin "$1")" riptide_media_packets_relayed_total "${2:-}"; }

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
drops="$(grep -Eo '[0-9]+ packets dropped by kernel' "$DIR/rtp.pcap.stderr" || echo 'unknown')"
echo "packets_lost=$((sent - recv)) (sent=$sent: UAC $(get sent_uac) + UAS $(get sent_uas) RTP packets from the SIPp media ports; received=$recv: UAC $(get recv_uac) + UAS $(get recv_uas) to them; tcpdump -i lo capture, $drops)"
case "$drops" in
    "0 packets dropped by kernel") ;;
    *) echo "warning: the capture itself dropped packets or could not say; packets_lost is not reliable" ;;
esac
[ "$successful" = "$CALLS" ] || { echo "warning: not every call succeeded; see $DIR"; exit 1; }
