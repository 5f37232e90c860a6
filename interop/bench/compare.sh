#!/usr/bin/env bash
# Side-by-side benchmark: the riptide pair against Kamailio+rtpengine, in one run (issue 6).
#
#   interop/bench/compare.sh [--quick] [--no-build] [--only cps|media]
#                            [--cps-start R] [--cps-step R] [--cps-max R] [--cps-secs S]
#                            [--calls "N ..."] [--hold S]
#
# anchor  = Kamailio (interop/bench/kamailio.cfg: stateful tm, record-routing, on 127.0.0.1:5066)
#           with rtpengine in userspace (--table=-1; ng control 127.0.0.1:2223, RTP 30000-49999)
#           driven by rtpengine_offer/answer/delete: one hop.
# riptide = the gateway pair (A 5070 -> HTTP/3 -> B -> 127.0.0.1:5080): two hops.
# Both answer through the same UAS on 127.0.0.1:5080, from the same UAC on 127.0.0.1:5090, and
# every measured step starts the system under test fresh, alone, and stops it afterwards.
#
# (a) call rate: SIPp scenarios/cmp_call_uac.xml -> cmp_call_uas.xml (PCMU SDP offer/answer, no
#     RTP, no 180, 1 s hold; see the scenario files for why they differ from cps.sh's) at R calls/s for S s, R = start, start+step, ... <= max; anchor and riptide
#     alternate (order swapped every step); a system stops at its first step with a failed call.
#     failed = attempted - SuccessfulCall(C) from SIPp's -trace_stat CSV.
# (b) media: N concurrent calls (examples/rtpload.rs, all set up within 1 s), G.711 PCMU 20 ms
#     both ways for --hold s. anchor: plain RTP/AVP. riptide: SDES-SRTP (AES_CM_128_HMAC_SHA1_80)
#     on both SIP legs (security = "sdes" in generated pair configs), QUIC datagrams between A and B.
#     CPU us/packet = utime+stime delta (/proc/PID/stat) of the relay processes over the run
#       (anchor: rtpengine + every kamailio process; riptide: gateways A + B; signalling included)
#       / packets relayed through the system, each packet counted once end to end = packets the
#       generators received (rtpload's own counts, same counter for both systems). Cross-checked
#       against rtpengine's "Total relayed packets" and riptide's riptide_media_packets_relayed_total
#       (A + B count every packet twice: once per hop).
#     riptide peak RSS per call = (VmHWM at the end - VmRSS idle before the calls) / highest
#       riptide_calls_active seen, per gateway (/proc/PID/status), at the largest N.
# (c) floor: examples/udprelay.rs at each N, right after the two systems: one thread, epoll +
#     recv + sendto per packet and nothing else, on 2N sockets at 50 packets/s each (the packet
#     rate both systems relay for N calls), driven by its own generator. No relay on kernel UDP
#     sockets costs less per packet; the table gives both systems' CPU per relayed packet as a
#     multiple of it, measured minutes apart.
# Defaults: rates 750, 1000, 1250, ... <= 4000 in 15 s steps; 200 then 500 calls held 20 s, in
# 3 rounds (--media-rounds N): each system's (and the floor's) median round is the table's,
# every round's figure is logged ("media median:"), one step is at the machine's mercy.
# --quick: rates 100 and 200 for 5 s, 50 calls held 5 s, one round (checks the harness; not for
#   figures).
# --table-only: print the table again from the results in interop/out/bench/compare/ (give the
#   same options as that run).  --only cps|media: one half.  --no-build: use target/release/{riptide,examples/rtpload} as they
#   are (otherwise rebuilt when their sources are newer, as pair.sh and media.sh do); either way
#   the run uses copies taken at its start, so a build during the run cannot mix binaries.
# All three log warnings only (riptide RUST_LOG=warn, rtpengine -L 4, kamailio debug=0).
# Runs in a private network namespace (unshare --net; root), so nothing on the host's ports is
# touched. Installs kamailio, rtpengine-daemon, rtpengine-utils and sip-tester with apt when missing.
# Raw logs: interop/out/bench/compare/ (run.log, table, cps/<sys>-<rate>/, media/r<round>/<sys>-<calls>/, and media/<sys>-<calls> linking to the median round).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/..
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib/common.sh"

usage() { sed -n '2,44p' "$0" >&2; exit 2; }
SELF="$INTEROP_DIR/bench/compare.sh"
BENCH="$INTEROP_DIR/bench"
SCN="$BENCH/scenarios"
RIPTIDE="$REPO_ROOT/target/release/riptide"
RTPLOAD="$REPO_ROOT/target/release/examples/rtpload"
UDPRELAY="$REPO_ROOT/target/release/examples/udprelay"
DIR="$OUT_DIR/bench/compare"

# Every port of the anchor, chosen clear of the pair (5070/5072/5080 SIP, 4433/4434, 9070/9072,
# 8443, media 10000-29999), of 5060/4443 and of the namespace's ephemeral range (set to
# 50000-60999 below so the generators' sockets never land in either relay's media range).
KAM_PORT=5066
NG_PORT=2223
RTPE_CLI_PORT=9923
RTPE_MIN=30000
RTPE_MAX=49999
# The same media capacity on both sides: rtpengine takes two port pairs per call (one per side)
# from its 20000 ports, 5000 calls at once; each gateway of the pair takes one pair per call
# (its SIP leg), so each gets 10000 ports (config/pair-*.toml have 5000, 2500 calls: at 2500
# calls/s of 1 s calls that ran out before the CPU did). SIPp's media ports (-mp) sit below.
PAIR_A_MEDIA="10000 19999"
PAIR_B_MEDIA="20000 29999"
SIPP_UAC_MEDIA=6000
SIPP_UAS_MEDIA=7000
UAS_PORT=5080
UAC_PORT=5090
EPHEMERAL="50000 60999"
# The floor relay's sockets (from 20000) and its generator's (from 30000): the two systems'
# media ranges, free while the floor runs alone; room for 2N = 10000 sockets.
FLOOR_BASE=20000
FLOOR_PEER_BASE=30000
KAM_CHILDREN=4

# ================================================================================================
# measuring helpers
# ================================================================================================

# cpu_us PID...: utime+stime of the processes in microseconds (whole thread group each).
cpu_us() {
    local tck pid stat rest total=0 v
    tck="$(getconf CLK_TCK)"
    for pid in "$@"; do
        stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || die "process $pid vanished during the measurement"
        rest="${stat##*) }"
        # after "comm) " the fields start at field 3: utime and stime are the 12th and 13th words
        v="$(awk '{ print $12 + $13 }' <<<"$rest")"
        total=$((total + v))
    done
    echo $((total * 1000000 / tck))
}

# cpu_of "PID PID...": cpu_us of a space-separated list.
# shellcheck disable=SC2086 # the list is meant to split
cpu_of() { cpu_us $1; }

# dropped GW: "reason value" lines of riptide_media_packets_dropped_total (summed over labels).
dropped() {
    curl -fsS --max-time 3 "$(metrics_url "$1")" 2>/dev/null | awk '
        /^riptide_media_packets_dropped_total\{/ { if (match($1, /reason="[^"]*"/)) d[substr($1, RSTART + 8, RLENGTH - 9)] += $NF }
        END { for (r in d) print r, d[r] }' || true
}

# held GW: riptide_answers_held_total as "outcome=N ..." (answers held until the media stream
# was bound; each gateway starts fresh with its run, so these are the run's own).
held() {
    curl -fsS --max-time 3 "$(metrics_url "$1")" 2>/dev/null | awk '
        /^riptide_answers_held_total\{/ { if (match($1, /outcome="[^"]*"/)) { printf "%s%s=%.0f", sep, substr($1, RSTART + 9, RLENGTH - 10), $NF; sep = " " } }
        END { print "" }' || true
}

# drop_delta BEFORE AFTER: "reason=delta ..." for the reasons that moved, or "none".
drop_delta() {
    awk 'NR == FNR { b[$1] = $2; next } { v = $2 - b[$1]; if (v != 0) { printf "%s%s=%.0f", sep, $1, v; sep = " " } }
         END { if (sep == "") print "none"; else print "" }' "$1" "$2"
}

# status_kb PID FIELD: a kB figure (VmRSS, VmHWM) from /proc/PID/status.
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || true; }

# rcvbuf_errors: this namespace's UDP RcvbufErrors (kernel drops for full receive buffers).
rcvbuf_errors() {
    awk '$1 == "Udp:" { if (!h) { for (i = 2; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp
}

# kv LINE KEY: the value of KEY in a line of key=value words (empty when absent).
kv() { awk -v k="$2" '{ for (i = 1; i <= NF; i++) { n = index($i, "="); if (substr($i, 1, n - 1) == k) { print substr($i, n + 1); exit } } }' <<<"$1"; }

# res FILE KEY: a value from a result file of key=value lines.
res() { sed -n "s/^$2=//p" "$1" 2>/dev/null | tail -n 1; }

div() { awk -v a="$1" -v b="$2" -v f="${3:-%.2f}" 'BEGIN { if (b + 0 > 0 && a != "" && a != "n/a") printf f "\n", a / b; else print "n/a" }'; }

# descendants PID: PID's children (kamailio's workers), one per line.
descendants() { ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true; }

# sip_probe PORT TIMEOUT_S: an OPTIONS to 127.0.0.1:PORT must draw any SIP response.
sip_probe() {
    python3 - "$1" "$2" <<'PY'
import socket, sys, time, uuid
port, limit = int(sys.argv[1]), float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
lp = s.getsockname()[1]
cid = uuid.uuid4().hex
msg = (f"OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{lp};branch=z9hG4bK{cid}\r\n"
       f"From: <sip:probe@127.0.0.1>;tag={cid[:8]}\r\nTo: <sip:probe@127.0.0.1:{port}>\r\nCall-ID: {cid}\r\n"
       f"CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
deadline = time.monotonic() + limit
s.settimeout(0.3)
while time.monotonic() < deadline:
    s.sendto(msg, ("127.0.0.1", port))
    try:
        data, _ = s.recvfrom(4096)
    except socket.timeout:
        continue
    if data.startswith(b"SIP/2.0 "):
        sys.exit(0)
sys.exit(1)
PY
}

# ensure_free PROTO:PORT...: fail naming the holder when a port this run needs is taken.
ensure_free() {
    local spec proto port
    for spec in "$@"; do
        proto="${spec%%:*}"; port="${spec##*:}"
        ! port_bound "$proto" "$port" || die "127.0.0.1:$port/$proto is in use: $(port_users "$proto" "$port")"
    done
}

# ================================================================================================
# the systems under test (inside the namespace)
# ================================================================================================

RTPE_PID=""; KAM_PID=""; KAM_KIDS=""; PAIR_UP=0; UAS_PID=""; UAC_PID=""; SAMPLER_PID=""

# wait_uac: wait for the load generator started in the background as UAC_PID; sets UAC_RC.
# Started in the background and waited for (instead of run in the foreground) because bash runs
# an INT/TERM trap only once a foreground command ends, and `timeout` puts the generator in a
# process group of its own where a terminal's Ctrl-C does not reach it.
wait_uac() {
    UAC_RC=0
    wait "$UAC_PID" || UAC_RC=$?
    UAC_PID=""
}

start_anchor() {
    local d="$1"
    ensure_free "udp:$KAM_PORT" "udp:$NG_PORT" "tcp:$RTPE_CLI_PORT"
    # --table=-1: no kernel forwarding table, every packet goes through rtpengine's userspace
    # loop (the baseline of the issue). --delete-delay=0 frees a call's ports at its BYE, so a
    # call-rate step does not run out of ports to calls that ended 30 s ago.
    rtpengine --foreground --log-stderr --log-level=4 --table=-1 --interface=127.0.0.1 \
        --listen-ng="127.0.0.1:$NG_PORT" --listen-cli="127.0.0.1:$RTPE_CLI_PORT" \
        --port-min="$RTPE_MIN" --port-max="$RTPE_MAX" --delete-delay=0 --timeout=60 \
        >>"$d/rtpengine.log" 2>&1 &
    RTPE_PID=$!
    wait_port_bound udp "$NG_PORT" 10 "$RTPE_PID" \
        || die "rtpengine did not bind its ng port 127.0.0.1:$NG_PORT: $(tail -n 5 "$d/rtpengine.log")"
    wait_port_bound tcp "$RTPE_CLI_PORT" 10 "$RTPE_PID" \
        || die "rtpengine did not bind its cli port 127.0.0.1:$RTPE_CLI_PORT: $(tail -n 5 "$d/rtpengine.log")"
    # Started after rtpengine answers: each Kamailio worker pings rtpengine once at start and
    # disables it for a minute if that ping goes unanswered.
    kamailio -f "$BENCH/kamailio.cfg" -DD -E -m 512 -M 32 \
        -A "SIP_LISTEN=udp:127.0.0.1:$KAM_PORT" -A "RTPENGINE_SOCK=\"udp:127.0.0.1:$NG_PORT\"" \
        -A "UAS_HOST=\"127.0.0.1\"" -A "UAS_PORT=$UAS_PORT" -A "CHILDREN=$KAM_CHILDREN" \
        >>"$d/kamailio.log" 2>&1 &
    KAM_PID=$!
    wait_port_bound udp "$KAM_PORT" 15 "$KAM_PID" \
        || die "kamailio did not bind 127.0.0.1:$KAM_PORT: $(grep -E 'ERROR|CRITICAL' "$d/kamailio.log" | tail -n 5)"
    sip_probe "$KAM_PORT" 10 || die "kamailio on 127.0.0.1:$KAM_PORT does not answer SIP (log $d/kamailio.log)"
    # Its workers are forked around the time the socket is bound: take the list once it holds still.
    local prev="" n=0
    KAM_KIDS="$(descendants "$KAM_PID" | tr '\n' ' ')"
    while [ "$KAM_KIDS" != "$prev" ] && [ "$n" -lt 25 ]; do
        prev="$KAM_KIDS"; sleep 0.2; n=$((n + 1))
        KAM_KIDS="$(descendants "$KAM_PID" | tr '\n' ' ')"
    done
    [ -n "$KAM_KIDS" ] || die "kamailio (pid $KAM_PID) has no worker processes (log $d/kamailio.log)"
    grep -q 'rtpp_test(): proxy did not respond' "$d/kamailio.log" \
        && die "a kamailio worker could not reach rtpengine at start-up (log $d/kamailio.log)"
    log "anchor up: rtpengine pid $RTPE_PID, kamailio pid $KAM_PID (workers $KAM_KIDS)"
}

# The relay processes are measured as two parts so the log shows where the time went:
# G1/G2 = rtpengine / every kamailio process, or gateway a / gateway b.
set_groups() {
    if [ "$1" = anchor ]; then
        N1=rtpengine; G1="$RTPE_PID"; N2=kamailio; G2="$KAM_PID $KAM_KIDS"
    else
        N1=a; G1="$(pair_pid a)"; N2=b; G2="$(pair_pid b)"
    fi
}

stop_anchor() {
    local p
    [ -z "$KAM_PID" ] || stop_pid "$KAM_PID" 5
    # The workers follow their main process; any that did not are ours to end, by pid.
    for p in $KAM_KIDS; do
        if kill -0 "$p" 2>/dev/null && grep -q kamailio "/proc/$p/cmdline" 2>/dev/null; then
            stop_pid "$p" 3
        fi
    done
    [ -z "$RTPE_PID" ] || stop_pid "$RTPE_PID" 5
    KAM_PID=""; KAM_KIDS=""; RTPE_PID=""
}

# rtpe_total LABEL: a counter from `rtpengine-ctl list totals` (completed sessions only).
rtpe_total() {
    rtpengine-ctl -ip "127.0.0.1:$RTPE_CLI_PORT" list totals 2>/dev/null \
        | awk -v l="$1" -F':' '{ k = $1; gsub(/^ +| +$/, "", k) } k == l { gsub(/ /, "", $2); print $2; exit }'
}

# set_media_ports FILE MIN MAX: the [media] port range of a gateway's configuration copy, and
# sip.max_calls to the calls it holds (a port pair each).
set_media_ports() {
    local f="$1" min="$2" max="$3" calls=$(( ($3 - $2 + 1) / 2 ))
    sed -i -e "s/^port_min = .*/port_min = $min/" -e "s/^port_max = .*/port_max = $max/" \
        -e "s/^max_calls = .*/max_calls = $calls/" "$f"
    [ "$(grep -c -E "^(port_min = $min|port_max = $max|max_calls = $calls)\$" "$f")" = 3 ] \
        || die "could not set the media ports of $f to $min-$max ($calls calls)"
}

# write_pair_configs NAME [SECURITY]: copies of config/pair-{a,b}.toml for this run (absolute
# paths; security on both legacy legs when given), checked by the gateway itself.
write_pair_configs() {
    local name="$1" security="${2:-}" d="$DIR/riptide-$1" set=() g err
    mkdir -p "$d/config" "$d/data" "$d/pair"
    [ -z "$security" ] || set=(--set "security=\"$security\"")
    python3 "$INTEROP_DIR/lib/pairconf.py" "$REPO_ROOT/config" "$d/config" --data-root "$d/data" \
        --token-file "$d/pair/a-to-b.token" "${set[@]}" >/dev/null \
        || die "lib/pairconf.py could not write the $name configs"
    set_media_ports "$d/config/pair-a.toml" $PAIR_A_MEDIA
    set_media_ports "$d/config/pair-b.toml" $PAIR_B_MEDIA
    for g in a b; do
        err="$("$RIPTIDE" check-config "$d/config/pair-$g.toml" 2>&1 >/dev/null)" \
            || die "gateway rejects $d/config/pair-$g.toml (riptide check-config): $err"
    done
}

start_pair() {
    local name="$1" d="$DIR/riptide-$1"
    export PAIR_CONFIG_DIR="$d/config" PAIR_OUT_DIR="$d/pair" RIPTIDE_BIN="$RIPTIDE"
    # Warnings only, like the anchor (kamailio.cfg debug=0, rtpengine -L 4): at its default level
    # riptide writes two lines per call per gateway, which would be measured as relay CPU.
    export RUST_LOG=warn
    PAIR_UP=1
    "$INTEROP_DIR/pair.sh" start >>"$d/pair-start.log" 2>&1 \
        || { tail -n 20 "$d/pair-start.log" >&2; die "could not start the riptide pair (logs in $d/pair)"; }
    log "riptide pair up ($name configs): a pid $(cat "$d/pair/a.pid"), b pid $(cat "$d/pair/b.pid")"
}

pair_pid() { cat "$PAIR_OUT_DIR/$1.pid"; }

stop_pair() {
    [ "$PAIR_UP" = 1 ] || return 0
    "$INTEROP_DIR/pair.sh" stop >/dev/null 2>&1 || log "warning: pair.sh stop failed (logs in $PAIR_OUT_DIR)"
    PAIR_UP=0
}

metrics_url() { if [ "$1" = a ]; then echo http://127.0.0.1:9070/metrics; else echo http://127.0.0.1:9072/metrics; fi; }

stop_sampler() {
    [ -z "$SAMPLER_PID" ] || stop_pid "$SAMPLER_PID" 2
    SAMPLER_PID=""
}

inner_cleanup() {
    [ -z "$UAC_PID" ] || stop_pid "$UAC_PID" 3
    [ -z "$UAS_PID" ] || stop_pid "$UAS_PID" 3
    stop_sampler
    stop_anchor
    stop_pair
}

# ================================================================================================
# (a) call rate
# ================================================================================================

# cps_step SYS RATE: one step against a freshly started SYS; writes $d/result, prints one line.
cps_step() {
    local sys="$1" rate="$2" d="$DIR/cps/$1-$2" target c1 c2
    local total=$((rate * CPS_SECS)) limit=$((rate * 10 + 10)) run_timeout=$((CPS_SECS + 30))
    rm -rf "$d"; mkdir -p "$d"
    ensure_free "udp:$UAS_PORT" "udp:$UAC_PORT"
    if [ "$sys" = anchor ]; then
        start_anchor "$d"; target="127.0.0.1:$KAM_PORT"
    else
        start_pair default; target=127.0.0.1:5070
    fi
    set_groups "$sys"
    local snmp0
    snmp0="$(rcvbuf_errors)"
    c1="$(cpu_of "$G1")"; c2="$(cpu_of "$G2")"
    (cd "$d" && exec timeout -k 5 $((run_timeout + 30)) sipp -sf "$SCN/cmp_call_uas.xml" -i 127.0.0.1 -p "$UAS_PORT" \
        -mi 127.0.0.1 -mp "$SIPP_UAS_MEDIA" -cp 8890 -aa -nostdin -max_socket 4096 -timeout $((run_timeout + 20))s \
        -trace_err -trace_screen) >"$d/uas.stdout" 2>&1 &
    UAS_PID=$!
    wait_port_bound udp "$UAS_PORT" 10 "$UAS_PID" || die "SIPp UAS did not bind 127.0.0.1:$UAS_PORT: $(tail -n 5 "$d/uas.stdout")"
    log "cps: $sys, $total calls at $rate/s toward $target"
    local uac_rc start end
    start=$(date +%s.%N)
    (cd "$d" && exec timeout -k 5 $((run_timeout + 10)) sipp "$target" -sf "$SCN/cmp_call_uac.xml" -s answer \
        -i 127.0.0.1 -p "$UAC_PORT" -mi 127.0.0.1 -mp "$SIPP_UAC_MEDIA" -cp 8891 -nostdin \
        -r "$rate" -rp 1000 -m "$total" -l "$limit" -d 1000 -max_socket 4096 \
        -timeout "${run_timeout}s" -recv_timeout 10s \
        -trace_stat -stf "$d/uac_stats.csv" -fd 1 -trace_err -trace_screen) >"$d/uac.stdout" 2>&1 &
    UAC_PID=$!
    wait_uac; uac_rc=$UAC_RC
    end=$(date +%s.%N)
    c1=$(( $(cpu_of "$G1") - c1 )); c2=$(( $(cpu_of "$G2") - c2 ))
    local drops=$(( $(rcvbuf_errors) - snmp0 ))
    stop_pid "$UAS_PID" 3; UAS_PID=""
    local extra=""
    if [ "$sys" = anchor ]; then
        extra="rtpengine offers/deletes: $(rtpengine-ctl -ip "127.0.0.1:$RTPE_CLI_PORT" list totals 2>/dev/null \
            | awk -F'|' '$1 ~ /127\.0\.0\.1/ { gsub(/ /, ""); print "offer=" $3 " answer=" $4 " delete=" $5; exit }')"
        stop_anchor
    else
        extra="riptide_calls_total: a=$(metric_sum "$(metrics_url a)" riptide_calls_total) b=$(metric_sum "$(metrics_url b)" riptide_calls_total)"
        stop_pair
    fi
    local successful sipp_failed failed cpu per_call elapsed
    read -r successful sipp_failed < <(awk -F';' '
        NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "SuccessfulCall(C)") s = i; if ($i == "FailedCall(C)") f = i } next }
        { last_s = $s; last_f = $f }
        END { print last_s + 0, last_f + 0 }' "$d/uac_stats.csv" 2>/dev/null || echo "0 0")
    failed=$((total - successful))
    cpu=$((c1 + c2))
    per_call="$(div "$cpu" "$successful" %.0f)"
    elapsed="$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')"
    {
        echo "sys=$sys"; echo "rate=$rate"; echo "attempted=$total"; echo "successful=$successful"
        echo "failed=$failed"; echo "cpu_us=$cpu"; echo "cpu_us_per_call=$per_call"
    } >"$d/result"
    echo "cps $sys rate=$rate successful=$successful failed=$failed (attempted $total in ${elapsed}s; SIPp FailedCall=$sipp_failed exit=$uac_rc; relay cpu ${cpu} us ($N1 $c1 + $N2 $c2) = $per_call us/call; UDP RcvbufErrors=$drops; $extra; logs $d)"
}

phase_cps() {
    local rate i=0 first second sys
    declare -A STOPPED=([anchor]=0 [riptide]=0) BEST=([anchor]="" [riptide]="")
    for ((rate = CPS_START; rate <= CPS_MAX; rate += CPS_STEP)); do
        [ "${STOPPED[anchor]}${STOPPED[riptide]}" != 11 ] || break
        # Swap who goes first each step: neither system always runs on a machine warmed (or
        # loaded) by the other's previous step.
        if ((i % 2 == 0)); then first=anchor; second=riptide; else first=riptide; second=anchor; fi
        for sys in "$first" "$second"; do
            [ "${STOPPED[$sys]}" = 0 ] || continue
            # Called as a plain command (not in an if) so that errexit stays on inside it.
            cps_step "$sys" "$rate"
            if [ "$(res "$DIR/cps/$sys-$rate/result" failed)" = 0 ]; then BEST[$sys]=$rate; else STOPPED[$sys]=1; fi
        done
        i=$((i + 1))
    done
    for sys in anchor riptide; do
        {
            echo "best=${BEST[$sys]}"
            echo "stopped=${STOPPED[$sys]}"
        } >"$DIR/cps/$sys.summary"
    done
}

# ================================================================================================
# (b) media
# ================================================================================================

# sampler OUT GW...: once a second, the gateways' RSS and active calls (for the per-call memory).
sampler() {
    local out="$1"; shift
    while :; do
        local line="" g
        for g in "$@"; do
            line="$line $g:$(status_kb "$(pair_pid "$g")" VmRSS):$(metric_sum "$(metrics_url "$g")" riptide_calls_active)"
        done
        echo "$(date +%s)$line" >>"$out"
        sleep 1
    done
}

# media_run SYS CALLS: one media run against a freshly started SYS; writes $d/result.
media_run() {
    local sys="$1" calls="$2" d="${3:-$DIR/media/$1-$2}" target srtp=()
    local run_timeout=$((MEDIA_HOLD + 40))
    rm -rf "$d"; mkdir -p "$d"
    ensure_free "udp:$UAS_PORT" "udp:$UAC_PORT"
    declare -A REL0 RSS0
    local g rtpe_rel0="" rtpe_rss0=""
    if [ "$sys" = anchor ]; then
        start_anchor "$d"; target="127.0.0.1:$KAM_PORT"
        rtpe_rel0="$(rtpe_total 'Total relayed packets')"
        rtpe_rss0="$(status_kb "$RTPE_PID" VmRSS)"
    else
        start_pair sdes; target=127.0.0.1:5070; srtp=(--srtp)
        for g in a b; do
            REL0[$g]="$(metric_sum "$(metrics_url "$g")" riptide_media_packets_relayed_total)"
            RSS0[$g]="$(status_kb "$(pair_pid "$g")" VmRSS)"
            dropped "$g" >"$d/dropped-$g.before"
        done
    fi
    local snmp0 c1 c2
    set_groups "$sys"
    snmp0="$(rcvbuf_errors)"
    c1="$(cpu_of "$G1")"; c2="$(cpu_of "$G2")"

    # The UAS stops its streams HOLD - 0.5 s after each ACK, the UAC at HOLD s after the 200 and
    # sends the BYE 1 s later (as media.sh does), so teardown is not counted as loss.
    "$RTPLOAD" uas --sip "127.0.0.1:$UAS_PORT" --media-ip 127.0.0.1 "${srtp[@]}" --calls "$calls" \
        --send-for "$(awk -v h="$MEDIA_HOLD" 'BEGIN { print h - 0.5 }')" --timeout $((run_timeout + 20)) \
        >"$d/uas.stdout" 2>"$d/uas.stderr" &
    UAS_PID=$!
    wait_port_bound udp "$UAS_PORT" 10 "$UAS_PID" || die "rtpload uas did not bind 127.0.0.1:$UAS_PORT: $(tail -n 5 "$d/uas.stderr")"
    if [ "$sys" = riptide ]; then
        sampler "$d/rss.samples" a b &
        SAMPLER_PID=$!
    fi
    log "media: $sys, $calls concurrent calls toward $target, G.711 both ways for ${MEDIA_HOLD}s${srtp:+ (SDES-SRTP)}"
    local uac_rc uas_rc=0
    timeout -k 5 $((run_timeout + 10)) "$RTPLOAD" uac --target "$target" --sip "127.0.0.1:$UAC_PORT" \
        --media-ip 127.0.0.1 "${srtp[@]}" --calls "$calls" --hold "$MEDIA_HOLD" --timeout "$run_timeout" \
        >"$d/uac.stdout" 2>"$d/uac.stderr" &
    UAC_PID=$!
    wait_uac; uac_rc=$UAC_RC
    wait_pid_exit "$UAS_PID" 15 || stop_pid "$UAS_PID" 3
    wait "$UAS_PID" 2>/dev/null || uas_rc=$?
    UAS_PID=""
    stop_sampler
    local snmp1
    c1=$(( $(cpu_of "$G1") - c1 )); c2=$(( $(cpu_of "$G2") - c2 ))
    snmp1="$(rcvbuf_errors)"

    local uac uas
    uac="$(grep '^role=uac' "$d/uac.stdout" || true)"; uas="$(grep '^role=uas' "$d/uas.stdout" || true)"
    [ -n "$uac" ] || { tail -n 5 "$d/uac.stderr" >&2; die "rtpload uac printed no figures (exit $uac_rc; $d/uac.stderr)"; }
    [ -n "$uas" ] || { tail -n 5 "$d/uas.stderr" >&2; die "rtpload uas printed no figures (exit $uas_rc; $d/uas.stderr)"; }
    local sent recv cpu per own own_how
    sent=$(( $(kv "$uac" packets_sent) + $(kv "$uas" packets_sent) ))
    recv=$(( $(kv "$uac" packets_received) + $(kv "$uas" packets_received) ))
    cpu=$((c1 + c2))
    per="$(div "$cpu" "$recv")"
    local rss_line=""
    if [ "$sys" = anchor ]; then
        local rel1 kernel hwm
        rel1="$(rtpe_total 'Total relayed packets')"
        kernel="$(rtpe_total 'Total relayed packets (kernel)')"
        own=$(( ${rel1:-0} - ${rtpe_rel0:-0} ))
        own_how="rtpengine 'Total relayed packets' delta=$own (kernel-forwarded: ${kernel:-?}; relay errors: $(rtpe_total 'Total relayed packet errors'))"
        [ "${kernel:-x}" = 0 ] || echo "warning: rtpengine reports kernel-forwarded packets (${kernel:-unreadable}): not a userspace figure"
        hwm="$(status_kb "$RTPE_PID" VmHWM)"
        rss_line="rtpengine RSS: idle ${rtpe_rss0} kB, peak (VmHWM) ${hwm} kB -> $(div $(( ${hwm:-0} - ${rtpe_rss0:-0} )) "$calls" %.1f) kB/call (kamailio runs on preallocated shared memory: not counted)"
        stop_anchor
    else
        local rel_a rel_b hwm peak per_gw pair_kb=0 ok_rss=1
        rel_a=$(( $(metric_sum "$(metrics_url a)" riptide_media_packets_relayed_total) - REL0[a] ))
        rel_b=$(( $(metric_sum "$(metrics_url b)" riptide_media_packets_relayed_total) - REL0[b] ))
        own=$(( (rel_a + rel_b) / 2 ))
        own_how="riptide_media_packets_relayed_total deltas a=$rel_a b=$rel_b, (a+b)/2=$own; per gateway on its own counter as media.sh: a $(div "$c1" "$rel_a") b $(div "$c2" "$rel_b") us/packet"
        for g in a b; do
            dropped "$g" >"$d/dropped-$g.after"
            own_how="$own_how; riptide_media_packets_dropped_total $g: $(drop_delta "$d/dropped-$g.before" "$d/dropped-$g.after")"
        done
        own_how="$own_how; riptide_answers_held_total a: $(held a)"
        rss_line="riptide RSS:"
        for g in a b; do
            hwm="$(status_kb "$(pair_pid "$g")" VmHWM)"
            peak="$(awk -v g="$g" '{ for (i = 2; i <= NF; i++) { split($i, f, ":"); if (f[1] == g && f[3] + 0 > m) m = f[3] + 0 } } END { print m + 0 }' "$d/rss.samples" 2>/dev/null || echo 0)"
            per_gw="$(div $(( ${hwm:-0} - ${RSS0[$g]:-0} )) "$peak" %.1f)"
            [ "$per_gw" != n/a ] || ok_rss=0
            [ "$per_gw" = n/a ] || pair_kb="$(awk -v a="$pair_kb" -v b="$per_gw" 'BEGIN { printf "%.1f", a + b }')"
            rss_line="$rss_line $g: idle ${RSS0[$g]} kB, VmHWM ${hwm} kB, peak calls_active $peak -> $per_gw kB/call;"
            echo "rss_$g=$per_gw" >>"$d/result"
            echo "peak_calls_$g=$peak" >>"$d/result"
        done
        [ "$ok_rss" = 1 ] || pair_kb=n/a
        echo "rss_pair=$pair_kb" >>"$d/result"
        stop_pair
    fi
    {
        echo "sys=$sys"; echo "calls=$calls"; echo "calls_ok=$(kv "$uac" calls_ok)"
        echo "cpu_us=$cpu"; echo "packets=$recv"; echo "own_packets=$own"; echo "cpu_per_packet=$per"
        echo "lost=$((sent - recv))"; echo "sent=$sent"; echo "rcvbuf_errors=$((snmp1 - snmp0))"
        echo "p50=$(kv "$uac" latency_p50_us)/$(kv "$uas" latency_p50_us)"
        echo "p99=$(kv "$uac" latency_p99_us)/$(kv "$uas" latency_p99_us)"
        echo "auth_fail=$(( $(kv "$uac" srtp_auth_failures) + $(kv "$uas" srtp_auth_failures) ))"
        echo "ticks_skipped=$(kv "$uac" ticks_skipped)/$(kv "$uas" ticks_skipped)"
    } >>"$d/result"
    echo "media $sys calls=$calls ok=$(kv "$uac" calls_ok)/$(kv "$uas" calls_ok) (uac/uas; exit $uac_rc/$uas_rc) cpu_us_per_packet=$per (relay cpu $cpu us = $N1 $c1 + $N2 $c2, / $recv packets received by the generators; $own_how) lost=$((sent - recv)) of $sent RcvbufErrors=$((snmp1 - snmp0)) srtp_auth_failures=$(res "$d/result" auth_fail) latency p50 $(res "$d/result" p50) p99 $(res "$d/result" p99) us (uac/uas); generator ticks_skipped $(res "$d/result" ticks_skipped) (uac/uas: 20 ms send ticks the generator fell behind on); logs $d"
    echo "  $rss_line"
    grep -h 'call(s) failed' "$d/uac.stderr" "$d/uas.stderr" | sed 's/^/  /' || true
}

# floor_run N [DIR]: examples/udprelay.rs relaying N calls' worth of packets (see (c) above).
floor_run() {
    local calls="$1" d="${2:-$DIR/media/floor-$1}" gen_pid out gen socks=$((2 * $1))
    mkdir -p "$d"
    [ "$socks" -le 10000 ] || { echo "floor: skipped at $calls calls (ports for 5000 at most)"; return 0; }
    log "floor: bare UDP relay, $socks sockets (the packet rate of $calls calls), ${MEDIA_HOLD}s measured after 3 s"
    "$UDPRELAY" gen --calls "$socks" --base "$FLOOR_BASE" --peer-base "$FLOOR_PEER_BASE" \
        --secs $((MEDIA_HOLD + 5)) >"$d/gen.stdout" 2>"$d/gen.stderr" &
    gen_pid=$!
    out="$("$UDPRELAY" relay --calls "$socks" --base "$FLOOR_BASE" --peer-base "$FLOOR_PEER_BASE" \
        --warm 3 --secs "$MEDIA_HOLD" 2>"$d/relay.stderr")" || true
    wait "$gen_pid" || true
    gen="$(cat "$d/gen.stdout")"
    [ -n "$out" ] || { echo "floor: udprelay printed nothing ($(tail -n 3 "$d/relay.stderr" "$d/gen.stderr"))"; return 0; }
    {
        echo "sys=floor"; echo "calls=$calls"; echo "cpu_us=$(kv "$out" cpu_us)"
        echo "packets=$(kv "$out" packets)"; echo "cpu_per_packet=$(kv "$out" us_per_packet)"
    } >"$d/result"
    echo "media floor calls=$calls $out; $gen"
}

# phase_media: MEDIA_ROUNDS rounds of every call count, the two systems in turns (which goes
# first alternates from round to round and from one call count to the next), each followed by
# the floor. The table reads each system's median round: media/SYS-CALLS links to it.
phase_media() {
    local calls j k sys d v best
    for ((k = 1; k <= MEDIA_ROUNDS; k++)); do
        j=0
        for calls in $CALLS_LIST; do
            d="$DIR/media/r$k"
            if (((k + j) % 2 == 1)); then
                media_run anchor "$calls" "$d/anchor-$calls"; media_run riptide "$calls" "$d/riptide-$calls"
            else
                media_run riptide "$calls" "$d/riptide-$calls"; media_run anchor "$calls" "$d/anchor-$calls"
            fi
            floor_run "$calls" "$d/floor-$calls"
            j=$((j + 1))
        done
    done
    for calls in $CALLS_LIST; do
        for sys in anchor riptide floor; do
            # "value round" per round that has a figure, sorted; the middle one (lower middle
            # for an even count).
            v="$(for ((k = 1; k <= MEDIA_ROUNDS; k++)); do
                    if [ "$sys" = floor ]; then
                        res "$DIR/media/r$k/floor-$calls/result" cpu_per_packet
                    else
                        per_packet "$DIR/media/r$k/$sys-$calls/result" relayed
                    fi | awk -v k="$k" '$1 + 0 > 0 { print $1, k }'
                done | sort -g)"
            best="$(awk '{ r[NR] = $2 } END { if (NR) print r[int((NR + 1) / 2)] }' <<<"$v")"
            rm -rf "$DIR/media/$sys-$calls"
            ln -s "r${best:-1}/$sys-$calls" "$DIR/media/$sys-$calls"
            echo "media median: $sys calls=$calls us/packet by round: $(awk '{ printf "%s%s (round %s)", (NR > 1 ? ", " : ""), $1, $2 }' <<<"$v"); median: round ${best:-none}"
        done
    done
}

# ================================================================================================
# the table
# ================================================================================================

# per_packet RESULT relayed|inout: relay CPU over the packets relayed (received by the
# generators), or over the packets into the system (sent by the generators) plus out of it.
per_packet() {
    local cpu recv sent
    cpu="$(res "$1" cpu_us)"; recv="$(res "$1" packets)"; sent="$(res "$1" sent)"
    if [ -z "$cpu" ] || [ -z "$recv" ] || [ -z "$sent" ]; then echo failed; return 0; fi
    if [ "$2" = relayed ]; then div "$cpu" "$recv"; else div "$cpu" $((sent + recv)); fi
}

ratio() { awk -v r="$1" -v a="$2" 'BEGIN { if (a + 0 > 0 && r + 0 > 0) printf "%.2fx\n", r / a; else print "n/a" }'; }

print_table() {
    local a r f fa fr cpsa cpsr calls d
    echo
    echo "== compare.sh: riptide pair vs Kamailio+rtpengine, one run, $(date -u -r "$DIR/environment" +%Y-%m-%dT%H:%MZ), $(nproc) cores, riptide built $(sed -n 's/^riptide: .* built \([^,]*\),.*/\1/p' "$DIR/bin/versions") =="
    printf '%-44s %20s %20s %15s\n' "" "Kamailio+rtpengine" "riptide pair" "riptide/anchor"
    if [ "$ONLY" != media ]; then
        cps_cell() {
            local best stopped
            best="$(res "$DIR/cps/$1.summary" best)"; stopped="$(res "$DIR/cps/$1.summary" stopped)"
            if [ -z "$best" ]; then echo "<$CPS_START"; elif [ "$stopped" = 0 ]; then echo ">=$best"; else echo "$best"; fi
        }
        cpsa="$(cps_cell anchor)"; cpsr="$(cps_cell riptide)"
        a="$(res "$DIR/cps/anchor.summary" best)"; r="$(res "$DIR/cps/riptide.summary" best)"
        printf '%-44s %20s %20s %15s\n' "max calls/s with 0 failed (${CPS_SECS} s steps)" "$cpsa" "$cpsr" "$(ratio "$r" "$a")"
    fi
    if [ "$ONLY" != cps ]; then
        # Two counts of the same packets, since "per packet" is read both ways: a relayed packet
        # (in at one side, out at the other) once, or every packet in and every packet out once
        # (twice as many). Both at the system's SIP-side boundary, so riptide's internal hop
        # (A -> QUIC -> B) is not counted: the pair is judged as one relay against one rtpengine.
        for calls in $CALLS_LIST; do
            fa="$DIR/media/anchor-$calls/result"; fr="$DIR/media/riptide-$calls/result"
            a="$(per_packet "$fa" relayed)"; r="$(per_packet "$fr" relayed)"
            printf '%-44s %20s %20s %15s\n' "CPU us per relayed packet, $calls calls" "$a" "$r" "$(ratio "$r" "$a")"
            a="$(per_packet "$fa" inout)"; r="$(per_packet "$fr" inout)"
            printf '%-44s %20s %20s %15s\n' "CPU us per packet in or out, $calls calls" "$a" "$r" "$(ratio "$r" "$a")"
        done
        for calls in $CALLS_LIST; do
            f="$(res "$DIR/media/floor-$calls/result" cpu_per_packet)"
            [ -n "$f" ] || continue
            a="$(per_packet "$DIR/media/anchor-$calls/result" relayed)"; r="$(per_packet "$DIR/media/riptide-$calls/result" relayed)"
            printf '%-44s %20s %20s\n' "per relayed packet / floor ($f us), $calls calls" "$(ratio "$a" "$f")" "$(ratio "$r" "$f")"
        done
        calls="${CALLS_LIST##* }"; d="$DIR/media/riptide-$calls/result"
        printf '%-44s %20s %20s\n' "riptide peak RSS per call, $calls calls" "" \
            "$(res "$d" rss_pair) KB"
        printf '%-44s %20s %20s\n' "  (gateway A / gateway B)" "" "$(res "$d" rss_a) / $(res "$d" rss_b) KB"
        for calls in $CALLS_LIST; do
            fa="$DIR/media/anchor-$calls/result"; fr="$DIR/media/riptide-$calls/result"
            printf '%-44s %20s %20s\n' "packets lost / RcvbufErrors, $calls calls" \
                "$(res "$fa" lost) of $(res "$fa" sent) / $(res "$fa" rcvbuf_errors)" "$(res "$fr" lost) of $(res "$fr" sent) / $(res "$fr" rcvbuf_errors)"
        done
    fi
    local how="how:"
    [ "$ONLY" = media ] || how="$how call rate = SIPp cmp_call_uac.xml -> cmp_call_uas.xml (INVITE with PCMU SDP, 200 with SDP, ACK, 1 s hold, BYE; no RTP), highest rate of ${CPS_START}+k*${CPS_STEP}/s with 0 failed calls (attempted - SuccessfulCall(C));"
    [ "$ONLY" = cps ] || how="$how media = rtpload, G.711 20 ms both ways, ${MEDIA_HOLD} s, median of ${MEDIA_ROUNDS} alternating rounds per system (by CPU per relayed packet; every row of a system and call count from that round); anchor plain RTP, riptide SDES-SRTP on both SIP legs + QUIC datagrams between A and B; CPU = utime+stime of rtpengine + all kamailio processes / gateways A + B, signalling included; relayed packets = RTP received by the generators (rtpload's counts), packets in or out = RTP sent by the generators + received, both at the SIP-side boundary (one rtpengine hop; two riptide hops counted as one system); RSS = (VmHWM - idle VmRSS) / peak riptide_calls_active, A + B; floor = examples/udprelay.rs (one thread: epoll, recv, sendto per packet, nothing else) on 2N sockets at 50 packets/s each from its own generator, CPU per packet it relayed;"
    echo "$how logging warnings only on all three. Raw logs: $DIR"
}

# ================================================================================================
# inside the namespace
# ================================================================================================

inner() {
    ip link set lo up
    sysctl -qw net.ipv4.ip_local_port_range="$EPHEMERAL" || die "cannot set the namespace's ephemeral port range"
    trap inner_cleanup EXIT
    trap 'exit 143' INT TERM
    mkdir -p "$DIR/cps" "$DIR/media"
    # Everything also goes to run.log; no pipelines below, so the process ids the cleanup needs
    # are set in this shell and not in a pipeline's subshell.
    exec > >(tee -a "$DIR/run.log") 2>&1
    write_pair_configs default
    write_pair_configs sdes sdes
    {
        echo "network: private namespace (unshare --net), ephemeral ports $EPHEMERAL"
        cat "$DIR/bin/versions"
        echo "kamailio: $(kamailio -v 2>/dev/null | head -n 1); children=$KAM_CHILDREN"
        echo "rtpengine: $(rtpengine --version 2>&1 | head -n 1); userspace (--table=-1), threads = default ($(nproc) cores)"
        echo "logging: warnings only everywhere (riptide RUST_LOG=warn, rtpengine --log-level=4, kamailio debug=0)"
        echo "sipp: $(sipp -v 2>/dev/null | grep -o 'v[0-9][^ ]*' | head -n 1)"
        echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    } >"$DIR/environment"
    cat "$DIR/environment"
    if [ "$ONLY" != media ]; then phase_cps; fi
    if [ "$ONLY" != cps ]; then phase_media; fi
    print_table >"$DIR/table"
    cat "$DIR/table"
}

# ================================================================================================
# argument handling (on the host)
# ================================================================================================

if [ "${1:-}" = --inner ]; then
    RIPTIDE="$DIR/bin/riptide"; RTPLOAD="$DIR/bin/rtpload"; UDPRELAY="$DIR/bin/udprelay"
    inner
    exit 0
fi

CPS_START=750; CPS_STEP=250; CPS_MAX=4000; CPS_SECS=15; CALLS_LIST="200 500"; MEDIA_HOLD=20
MEDIA_ROUNDS=3
BUILD=1; ONLY=""; TABLE_ONLY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --table-only) TABLE_ONLY=1 ;;
        --quick) CPS_START=100; CPS_STEP=100; CPS_MAX=200; CPS_SECS=5; CALLS_LIST=50; MEDIA_HOLD=5; MEDIA_ROUNDS=1 ;;
        --no-build) BUILD=0 ;;
        --only) ONLY="${2:?}"; shift ;;
        --cps-start) CPS_START="${2:?}"; shift ;;
        --cps-step) CPS_STEP="${2:?}"; shift ;;
        --cps-max) CPS_MAX="${2:?}"; shift ;;
        --cps-secs) CPS_SECS="${2:?}"; shift ;;
        --calls) CALLS_LIST="${2:?}"; shift ;;
        --hold) MEDIA_HOLD="${2:?}"; shift ;;
        --media-rounds) MEDIA_ROUNDS="${2:?}"; shift ;;
        *) usage ;;
    esac
    shift
done
for v in CPS_START CPS_STEP CPS_MAX CPS_SECS MEDIA_HOLD MEDIA_ROUNDS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer (got '${!v}')"
done
for c in $CALLS_LIST; do [[ "$c" =~ ^[1-9][0-9]*$ ]] || die "--calls takes positive integers (got '$c')"; done
[ -n "$CALLS_LIST" ] || die "--calls needs at least one number"
case "$ONLY" in ""|cps|media) ;; *) die "--only takes cps or media" ;; esac
[ "$MEDIA_HOLD" -ge 2 ] || die "--hold must be at least 2 s (the UAS stops sending 0.5 s early)"
export CPS_START CPS_STEP CPS_MAX CPS_SECS CALLS_LIST MEDIA_HOLD MEDIA_ROUNDS ONLY
if [ "$TABLE_ONLY" = 1 ]; then
    # The table again from the results of the last run (same options as that run), e.g. after
    # it was interrupted during the media half.
    [ -f "$DIR/environment" ] || die "no run in $DIR to print a table from"
    print_table
    exit 0
fi

need_cmd sipp sip-tester
need_cmd kamailio kamailio
need_cmd rtpengine rtpengine-daemon
need_cmd rtpengine-ctl rtpengine-utils
need_cmd ss iproute2
need_cmd ip iproute2
need_cmd ps procps
need_cmd curl curl
need_cmd timeout coreutils
need_cmd python3 python3
need_cmd unshare util-linux
need_cmd sysctl procps
for m in tm tmx sl rr pv maxfwd textops siputils xlog rtpengine kex corex; do
    [ -f "/usr/lib/x86_64-linux-gnu/kamailio/modules/$m.so" ] \
        || die "kamailio module $m.so is missing from /usr/lib/x86_64-linux-gnu/kamailio/modules (kamailio.cfg loads it)"
done
kamailio -c -f "$BENCH/kamailio.cfg" >/dev/null 2>&1 \
    || die "kamailio rejects $BENCH/kamailio.cfg: $(kamailio -c -f "$BENCH/kamailio.cfg" 2>&1 | grep -E 'ERROR|CRITICAL' | head -n 3)"
unshare --net true 2>/dev/null \
    || die "unshare --net is not permitted here (needs root/CAP_SYS_ADMIN): compare.sh runs both systems in a private network namespace"

if [ "$BUILD" = 1 ]; then
    # Build on the host: the namespace has no network (cargo may need the registry).
    "$INTEROP_DIR/pair.sh" build
    newer=""
    if [ -x "$RTPLOAD" ]; then
        newer="$(find "$REPO_ROOT/examples/rtpload.rs" "$REPO_ROOT/src/media/srtp.rs" "$REPO_ROOT/src/sip/msg.rs" \
            "$REPO_ROOT/Cargo.toml" "$REPO_ROOT/Cargo.lock" -newer "$RTPLOAD" -print -quit 2>/dev/null || true)"
    fi
    if [ -x "$UDPRELAY" ] && [ -z "$newer" ]; then
        newer="$(find "$REPO_ROOT/examples/udprelay.rs" -newer "$UDPRELAY" -print -quit 2>/dev/null || true)"
    fi
    if [ ! -x "$RTPLOAD" ] || [ ! -x "$UDPRELAY" ] || [ -n "$newer" ]; then
        log "building rtpload and udprelay (cargo build --release --locked --example rtpload --example udprelay)"
        (cd "$REPO_ROOT" && cargo build --release --locked --example rtpload --example udprelay) >"$OUT_DIR/build-rtpload.log" 2>&1 || {
            tail -n 40 "$OUT_DIR/build-rtpload.log" >&2
            die "cargo build --release --example rtpload --example udprelay failed (full log: $OUT_DIR/build-rtpload.log)"
        }
    fi
fi
[ -x "$RIPTIDE" ] || die "no riptide binary at $RIPTIDE (run without --no-build, or cargo build --release)"
[ -x "$RTPLOAD" ] || die "no rtpload binary at $RTPLOAD (run without --no-build, or cargo build --release --example rtpload)"
[ -x "$UDPRELAY" ] || die "no udprelay binary at $UDPRELAY (run without --no-build, or cargo build --release --example udprelay)"

rm -rf "$DIR"; mkdir -p "$DIR/bin"
# Run private copies: a cargo build by someone else during the run would otherwise swap the
# binary between steps, and the steps must all measure the same build.
cp "$RIPTIDE" "$DIR/bin/riptide"; cp "$RTPLOAD" "$DIR/bin/rtpload"; cp "$UDPRELAY" "$DIR/bin/udprelay"
{
    echo "riptide: $RIPTIDE built $(date -u -r "$RIPTIDE" +%FT%TZ), sha256 $(sha256sum "$RIPTIDE" | cut -c1-16)"
    echo "rtpload: $RTPLOAD built $(date -u -r "$RTPLOAD" +%FT%TZ), sha256 $(sha256sum "$RTPLOAD" | cut -c1-16)"
} >"$DIR/bin/versions"
log "compare: logs in $DIR"
exec unshare --net -- bash "$SELF" --inner
