#!/usr/bin/env bash
# Real-UA interop run: one call per media mode, baresip -> gateway A -> HTTP/3 -> gateway B -> baresip.
#
#   interop/baresip/run.sh [--direct] [--host-net] [MODE ...]   modes: rtp sdes dtls ice-sdes ice-dtls ice-full
#                                                               (default: all five)
#   interop/baresip/run.sh --selftest-checker   prove the checks: 440 Hz passes, 1000 Hz, silence
#                                               and near misses fail; the wire rules on synthetic pcaps
#
# Per mode: per-mode copies of config/pair-{a,b}.toml (interop/out/baresip/<mode>/config), a fresh
# gateway pair on them, a tcpdump capture on lo, a baresip callee (sip:answer@127.0.0.1, port 5080,
# auto-answer) and a baresip caller (port 5090) that dials sip:answer@127.0.0.1:5070. Both send a
# 440 Hz tone from a WAV (aufile) and record what they receive (sndfile); the caller's WAV (6 s)
# running out hangs up the call. Then check.py verifies both recordings (440 Hz +-10, >= 3 s of
# sound) and the capture (RTP both ways; SRTP only, DTLS before media, STUN first, per mode).
# Every mode runs in its own network namespace (unshare --net; ICE modes need it, see README);
# --host-net runs the non-ICE modes on the host's loopback instead. --direct: no gateways, the
# caller dials the callee on 5080 (validates the UA configs and the checks themselves).
# Prints one PASS/FAIL line per mode and `baresip: N passed, M failed`; exit 1 on any failure.
# Logs, recordings, configs and the pcap: interop/out/baresip/<mode>/ (--direct: <mode>-direct/).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR/..
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/lib/common.sh"

BS_DIR="$INTEROP_DIR/baresip"
LOG_ROOT="$OUT_DIR/baresip"
ALL_MODES="rtp sdes dtls ice-sdes ice-dtls ice-full"
MODULE_DIR=/usr/lib/baresip/modules

CALLER_SIP=5090; CALLER_RTP="31000-31099"
CALLEE_SIP=5080; CALLEE_RTP="32000-32099"
A_SIP=5070; A_MEDIA="20000-24999"
B_SIP=5072; B_MEDIA="25000-29999"
CALL_SECONDS="${BARESIP_CALL_SECONDS:-6}"    # the caller's tone length = the call's length
SETUP_TIMEOUT="${BARESIP_SETUP_TIMEOUT:-10}" # dial -> answered (or rejected)
MEDIA_GRACE="${BARESIP_MEDIA_GRACE:-8}"      # answered -> ended, on top of CALL_SECONDS (DTLS retries 1 s)
MODE_TIMEOUT="${BARESIP_MODE_TIMEOUT:-60}"   # hard bound per mode (the inner run is killed after it)
MIN_MEDIA="${BARESIP_MIN_MEDIA:-100}"        # media packets per leg and direction (2 s of 20 ms)
BIN="${RIPTIDE_BIN:-$REPO_ROOT/target/release/riptide}"
# What baresip 1.0.0 logs when an account's mediaenc/medianat module is not loaded (it then
# calls without encryption/ICE), e.g. "account: mediaenc not found: 'srtp-mand'".
MISSING_MODULE='(mediaenc|medianat) not found'

usage() { awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; }

# mode_settings MODE: sets SECURITY, ICE, MEDIAENC, MEDIANAT, MODULES, MEDIA_IP for MODE.
mode_settings() {
    MEDIANAT=""; ICE=off; MEDIA_IP=127.0.0.1
    case "$1" in
        rtp) SECURITY=rtp; MEDIAENC="" ;;
        sdes) SECURITY=sdes; MEDIAENC=srtp-mand ;;
        dtls) SECURITY=dtls; MEDIAENC=dtls_srtp ;;
        ice-sdes) SECURITY=sdes; MEDIAENC=srtp-mand; ICE=lite; MEDIANAT=ice; MEDIA_IP=127.0.0.2 ;;
        ice-dtls) SECURITY=dtls; MEDIAENC=dtls_srtp; ICE=lite; MEDIANAT=ice; MEDIA_IP=127.0.0.2 ;;
        # The gateways as full ICE agents (ice = "full"): they send checks and consent too.
        ice-full) SECURITY=sdes; MEDIAENC=srtp-mand; ICE=full; MEDIANAT=ice; MEDIA_IP=127.0.0.2 ;;
        *) die "unknown mode '$1' (known: $ALL_MODES)" ;;
    esac
    MODULES=""
    case "$MEDIAENC" in
        srtp-mand) MODULES="srtp" ;;
        dtls_srtp) MODULES="dtls_srtp" ;;
    esac
    [ -z "$MEDIANAT" ] || MODULES="$MODULES ice"
}

is_ice() { case "$1" in ice-*) return 0 ;; *) return 1 ;; esac; }

# ---------------------------------------------------------------------------- checker self-test

selftest_checker() {
    local dir="$LOG_ROOT/selftest" rc=0 out f expect got spec
    local gen=(sox -n -r 8000 -c 1 -b 16 -e signed-integer)
    need_cmd sox sox
    need_cmd python3 python3
    rm -rf "$dir"; mkdir -p "$dir"
    "${gen[@]}" "$dir/tone-440.wav" synth 5 sine 440 vol 0.5
    "${gen[@]}" "$dir/tone-1000.wav" synth 5 sine 1000 vol 0.5
    "${gen[@]}" "$dir/silence.wav" trim 0 5
    # Near the limits: 2 s of 440 Hz (too short), 455 Hz (outside +-10 Hz), 440 Hz at -30 dBFS
    # with low noise and a 1 s pause (passes), 440 Hz at -50 dBFS (below the silence threshold).
    "${gen[@]}" "$dir/short-440.wav" synth 2 sine 440 vol 0.5
    "${gen[@]}" "$dir/tone-455.wav" synth 5 sine 455 vol 0.5
    "${gen[@]}" "$dir/q-tone.wav" synth 5 sine 440 vol 0.0316
    "${gen[@]}" "$dir/q-noise.wav" synth 5 whitenoise vol 0.002
    sox -m "$dir/q-tone.wav" "$dir/q-noise.wav" "$dir/quiet-gap-440.wav" pad 1@2
    "${gen[@]}" "$dir/faint-440.wav" synth 5 sine 440 vol 0.00316
    for spec in tone-440:PASS tone-1000:FAIL silence:FAIL short-440:FAIL tone-455:FAIL quiet-gap-440:PASS faint-440:FAIL; do
        f="${spec%%:*}"; expect="${spec##*:}"
        out="$(python3 "$BS_DIR/check.py" wav "$dir/$f.wav" || true)"
        got="$(sed -n 's/.*result=\([A-Z]*\).*/\1/p' <<<"$out")"
        if [ "$got" = "$expect" ]; then
            echo "ok   $f: expected $expect, got $got ($out)"
        else
            echo "BAD  $f: expected $expect, got ${got:-nothing} ($out)"
            rc=1
        fi
    done
    # The wire rules, on synthetic captures (plain RTP, wrong SRTP tag, DTLS/STUN order, ...).
    python3 "$BS_DIR/check.py" selftest-pcap || rc=1
    if [ "$rc" = 0 ]; then echo "checker self-test: PASS"; else echo "checker self-test: FAIL"; fi
    return "$rc"
}

# ---------------------------------------------------------------------------- one mode (inner)

# fill TEMPLATE OUT KEY=VALUE...: replace every @KEY@ by VALUE (which may span lines).
fill() {
    local tpl="$1" out="$2" text kv val
    shift 2
    text="$(cat "$tpl")"
    for kv in "$@"; do
        val="${kv#*=}"
        text="${text//"@${kv%%=*}@"/"$val"}"
    done
    printf '%s\n' "$text" >"$out"
    ! grep -q '@[A-Z_]*@' "$out" || die "unfilled placeholder in $out"
}

# make_ua DIR USER SIP_PORT RTP_PORTS TONE EXTRA_ACCOUNT_PARAMS: baresip config folder for one UA.
make_ua() {
    local dir="$1" user="$2" sip="$3" rtp="$4" tone="$5" params="$6" mods="" m
    mkdir -p "$dir/rec"
    for m in $MODULES; do mods="${mods}module			$m.so"$'\n'; done
    if [ -n "$MEDIAENC" ]; then params="$params;mediaenc=$MEDIAENC"; fi
    if [ -n "$MEDIANAT" ]; then params="$params;medianat=$MEDIANAT"; fi
    # net_interface stays 127.0.0.1 in the ICE modes too: SIP and the session-level c= stay there,
    # and the ice module never offers 127.0.0.1, so its only host candidate is 127.0.0.2.
    fill "$BS_DIR/templates/config.in" "$dir/config" "SIP_PORT=$sip" "NET_IF=127.0.0.1" "TONE=$tone" \
        "RTP_PORTS=$rtp" "SND_DIR=$dir/rec" "EXTRA_MODULES=${mods%$'\n'}"
    fill "$BS_DIR/templates/accounts.in" "$dir/accounts" "USER=$user" "ACCOUNT_PARAMS=$params"
}

CALLER_PID=""; CALLEE_PID=""; PAIR_UP=0
inner_cleanup() {
    [ -z "$CALLER_PID" ] || stop_pid "$CALLER_PID" 3
    [ -z "$CALLEE_PID" ] || stop_pid "$CALLEE_PID" 3
    CALLER_PID=""; CALLEE_PID=""
    if [ "$PAIR_UP" = 1 ]; then "$INTEROP_DIR/pair.sh" stop >>"$DIR/run.log" 2>&1 || true; PAIR_UP=0; fi
    stop_capture
}

# result PASS|FAIL DETAIL: the mode's one line, read back by the outer run.
result() {
    printf '%s %s %s\n' "$1" "$NAME" "$2" >"$DIR/result"
    [ "$1" = PASS ]
}

# wait_log FILE REGEX TIMEOUT_S [PID]: poll FILE for an extended regex; fail early if PID exits.
wait_log() {
    local file="$1" re="$2" limit="$3" pid="${4:-}" deadline
    deadline=$(( $(date +%s) + limit ))
    until grep -Eq "$re" "$file" 2>/dev/null; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            grep -Eq "$re" "$file" 2>/dev/null && return 0
            return 1
        fi
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# ua_state LOG: what a baresip log says about the media, e.g. "ice:ok srtp:AEAD_AES_128_GCM rx:yes".
ua_state() {
    local log="$1" s="" n v
    if [ -n "$MEDIANAT" ]; then
        if grep -q 'connectivity check is complete' "$log"; then s="$s ice:ok"; else s="$s ice:NO"; fi
    fi
    case "$MEDIAENC" in
        srtp-mand)
            v="$(sed -n 's/.*SRTP is Enabled (cryptosuite=\([A-Za-z0-9_]*\)).*/\1/p' "$log" | head -n 1)"
            s="$s srtp:${v:-NO}" ;;
        dtls_srtp)
            v="$(sed -n 's/.*DTLS-SRTP complete.*Profile=\([A-Za-z0-9_]*\).*/\1/p' "$log" | head -n 1)"
            s="$s dtls:${v:-NO}" ;;
    esac
    if grep -q "incoming rtp for 'audio' established" "$log"; then s="$s rx:yes"; else s="$s rx:NO"; fi
    n="$(grep -c 'failed to decrypt RTP packet' "$log" || true)"
    if [ "$n" != 0 ]; then
        v="$(sed -n 's/.*failed to decrypt RTP packet with \([0-9]*\) bytes.*/\1/p' "$log" | head -n 1)"
        s="$s decrypt-errors:$n(${v}B)"
    fi
    echo "${s# }"
}

# gw_warnings: the first WARN/ERROR lines of the gateways' logs, without timestamps and spans.
gw_warnings() {
    local g
    for g in a b; do
        grep -E '^[0-9TZ:.-]+ +(WARN|ERROR) ' "$DIR/pair/$g.log" 2>/dev/null | head -n 2 \
            | sed -E "s/^[^ ]+ +(WARN|ERROR) .*(riptide|rsip)[a-z_:]*: /gateway $g \1: /" || true
    done
}

# ua_why LOG: the lines of a baresip log that explain a failed call.
ua_why() {
    grep -E 'session closed|rejected|not found|call failed|error' "$1" 2>/dev/null \
        | grep -v 'failed to decrypt' | head -n 2 | sed 's/\x1b\[[0-9;]*m//g' | tr '\n' ' ' || true
}

run_mode() {
    MODE="$1"; DIRECT="$2"
    NAME="$MODE"; [ "$DIRECT" = 0 ] || NAME="$MODE-direct"
    DIR="$LOG_ROOT/$NAME"
    mode_settings "$MODE"
    export PAIR_CONFIG_DIR="$DIR/config" PAIR_OUT_DIR="$DIR/pair" RIPTIDE_BIN="$BIN"
    trap inner_cleanup EXIT
    trap 'exit 143' INT TERM

    # A fresh namespace's lo is down; ICE modes add 127.0.0.2 as /32 (a /8 secondary address
    # would make packets to it leave with source 127.0.0.1: peer-reflexive candidates, DTLS drops).
    if [ "${BARESIP_IN_NETNS:-0}" = 1 ]; then
        ip link set lo up
        if is_ice "$MODE"; then ip addr add 127.0.0.2/32 dev lo; fi
    fi
    if [ "$MEDIA_IP" != 127.0.0.1 ] && ! ip -4 addr show dev lo | grep -q "inet $MEDIA_IP/32"; then
        result FAIL "lo has no $MEDIA_IP/32 (ICE modes run in their own network namespace)"; return 1
    fi

    local note="" target="sip:answer@127.0.0.1:$A_SIP"
    if [ "$DIRECT" = 0 ]; then
        # Gateway configs; rtp mode alone may run on a binary that does not know [media]
        # security/ice yet (plain RTP is all such a binary does); other modes fail here, saying why.
        local conf=(python3 "$INTEROP_DIR/lib/pairconf.py" "$REPO_ROOT/config" "$DIR/config" --data-root "$DIR/data"
            --token-file "$DIR/pair/a-to-b.token" --media-ip "$MEDIA_IP" --set "security=\"$SECURITY\"" --set "ice=\"$ICE\"")
        local cc_err
        "${conf[@]}" || { result FAIL "could not write the pair configs"; return 1; }
        cc_err="$( { "$BIN" check-config "$DIR/config/pair-a.toml" && "$BIN" check-config "$DIR/config/pair-b.toml"; } 2>&1 >/dev/null || true)"
        # shellcheck disable=SC2016 # the backquotes are literal, part of riptide's message
        if [ -n "$cc_err" ] && [ "$MODE" = rtp ] && ! grep -v -E 'unknown field `(security|ice)`' <<<"$cc_err" | grep -q .; then
            note=" (this gateway binary does not know [media] security/ice: configs without them)"
            "${conf[@]}" --omit security --omit ice
            cc_err="$( { "$BIN" check-config "$DIR/config/pair-a.toml" && "$BIN" check-config "$DIR/config/pair-b.toml"; } 2>&1 >/dev/null || true)"
        fi
        if [ -n "$cc_err" ]; then
            result FAIL "gateway rejects the $MODE config (riptide check-config): $(head -n 3 <<<"$cc_err" | tr '\n' ' ')"
            return 1
        fi
    else
        target="sip:answer@127.0.0.1:$CALLEE_SIP"
    fi

    make_ua "$DIR/callee" answer "$CALLEE_SIP" "$CALLEE_RTP" "$LOG_ROOT/tone-callee.wav" ";answermode=auto"
    make_ua "$DIR/caller" caller "$CALLER_SIP" "$CALLER_RTP" "$LOG_ROOT/tone-caller.wav" ""

    # Everything but the QUIC between the gateways: SIP and both legacy legs.
    CAPTURE_SNAPLEN=4096 start_capture "$DIR/capture.pcap" "udp and not port 4433 and not port 4434"

    if [ "$DIRECT" = 0 ]; then
        if ! "$INTEROP_DIR/pair.sh" start >>"$DIR/run.log" 2>&1; then
            result FAIL "gateway pair did not start: $(grep -E '^error' "$DIR/run.log" | tail -n 1 || true)"; return 1
        fi
        PAIR_UP=1
    fi

    local bs_life=$((SETUP_TIMEOUT + CALL_SECONDS + MEDIA_GRACE + 10))
    if port_bound udp "$CALLEE_SIP"; then
        result FAIL "127.0.0.1:$CALLEE_SIP is taken: $(port_users udp "$CALLEE_SIP")"; return 1
    fi
    (cd "$DIR/callee" && exec timeout -k 2 "$bs_life" baresip -f "$DIR/callee" -t "$bs_life") \
        </dev/null >"$DIR/callee.log" 2>&1 &
    CALLEE_PID=$!
    if ! wait_log "$DIR/callee.log" '^baresip is ready' 10 "$CALLEE_PID"; then
        result FAIL "baresip callee did not start: $(tail -n 2 "$DIR/callee.log" | tr '\n' ' ')"; return 1
    fi
    # A mediaenc/medianat module missing when the account is read: baresip only warns and
    # calls without encryption/ICE. Refuse such a run.
    if grep -Eq "$MISSING_MODULE" "$DIR/callee.log"; then
        result FAIL "baresip callee: $(grep -Eo "$MISSING_MODULE.*" "$DIR/callee.log" | head -n 1)"; return 1
    fi

    local t0 t1 phase=dialled
    t0=$(date +%s.%N)
    (cd "$DIR/caller" && exec timeout -k 2 "$bs_life" baresip -f "$DIR/caller" -t "$bs_life" \
        -e "/dial $target") </dev/null >"$DIR/caller.log" 2>&1 &
    CALLER_PID=$!
    # baresip stays up after a call: it is stopped once its log says the call is over. A call
    # ends by the caller's tone running out (BYE); with DTLS, baresip starts the tone only once
    # the handshake is done, so a failed handshake shows as a call that does not end.
    if wait_log "$DIR/caller.log" 'Call established|session closed|call failed|terminated \(duration' "$SETUP_TIMEOUT" "$CALLER_PID"; then
        phase=answered
        if wait_log "$DIR/caller.log" 'terminated \(duration|session closed' $((CALL_SECONDS + MEDIA_GRACE)) "$CALLER_PID"; then
            phase=ended
        fi
    fi
    t1=$(date +%s.%N)
    # The callee hears of the end through the gateways; its recording is complete once its call
    # is terminated (sndfile writes the WAV header then).
    [ "$phase" != ended ] || wait_log "$DIR/callee.log" 'terminated \(duration|session closed' 5 "$CALLEE_PID" || true
    stop_pid "$CALLER_PID" 5; CALLER_PID=""
    stop_pid "$CALLEE_PID" 5; CALLEE_PID=""
    if [ "$PAIR_UP" = 1 ]; then "$INTEROP_DIR/pair.sh" stop >>"$DIR/run.log" 2>&1 || true; PAIR_UP=0; fi
    stop_capture

    local call_s problems=() figures="" state
    call_s="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"
    state="caller[$(ua_state "$DIR/caller.log")] callee[$(ua_state "$DIR/callee.log")]"
    if ! grep -q 'Call established' "$DIR/caller.log"; then
        problems+=("call not established (caller: $(ua_why "$DIR/caller.log")callee: $(ua_why "$DIR/callee.log"))")
    elif [ "$phase" != ended ]; then
        problems+=("call did not end within $((CALL_SECONDS + MEDIA_GRACE))s of the answer (the caller's ${CALL_SECONDS}s tone never ran out: its audio never started?)")
    fi
    if grep -Eq "$MISSING_MODULE" "$DIR/caller.log"; then
        problems+=("caller: $(grep -Eo "$MISSING_MODULE.*" "$DIR/caller.log" | head -n 1)")
    fi

    # Recordings and wire. Without a call their failures only repeat that there was none: they are
    # still written to checks.txt, but not listed.
    local established=1
    grep -q 'Call established' "$DIR/caller.log" || established=0
    local who rec out n
    for who in caller callee; do
        n="$(find "$DIR/$who/rec" -name '*-dec.wav' | wc -l)"
        if [ "$n" != 1 ]; then
            [ "$established" = 0 ] || problems+=("$who: $n recordings (want 1)")
            figures="$figures $who-rx:none"
            continue
        fi
        rec="$(find "$DIR/$who/rec" -name '*-dec.wav')"
        out="$(python3 "$BS_DIR/check.py" wav "$rec" || true)"
        echo "$who recording: $out" >>"$DIR/checks.txt"
        figures="$figures $who-rx:$(sed -n 's/.*nonsilent=\([0-9.]*\).*/\1/p' <<<"$out")s@$(sed -n 's/.*dominant_hz=\([0-9.a-z]*\).*/\1/p' <<<"$out")Hz"
        grep -q 'result=PASS' <<<"$out" || [ "$established" = 0 ] || problems+=("$who recording: $(sed -n 's/.*why=//p' <<<"$out" | tr '_' ' ')$(grep -o 'error=[^ ]*' <<<"$out" || true)")
    done

    # Wire.
    local legs=()
    if [ "$DIRECT" = 0 ]; then
        legs=(--leg "caller:$CALLER_RTP:$A_MEDIA:$CALLER_SIP:$A_SIP" --leg "callee:$CALLEE_RTP:$B_MEDIA:$CALLEE_SIP:$B_SIP")
    else
        legs=(--direct --leg "caller:$CALLER_RTP:$CALLEE_RTP:$CALLER_SIP:$CALLEE_SIP")
    fi
    out="$(python3 "$BS_DIR/check.py" pcap "$DIR/capture.pcap" --mode "$MODE" --min-media "$MIN_MEDIA" "${legs[@]}" || true)"
    echo "$out" >>"$DIR/checks.txt"
    # " caller>A=N A>caller=N callee>B=N B>callee=N" from the `leg` lines.
    local pk
    pk="$(awk -v direct="$DIRECT" '/^leg /{
            name = $2; gw = (direct == 1) ? "callee" : ((name == "caller") ? "A" : "B"); n = split($0, parts, " [|] ");
            for (i = 2; i <= n; i++) {
                if (split(parts[i], f, " ") < 2 || f[2] !~ /^media=/) continue
                m = f[2]; sub("media=", "", m);
                s = s sprintf(" %s=%s", (f[1] == "ua>gw") ? name ">" gw : gw ">" name, m)
            }
          } END { print s }' <<<"$out")"
    if [ "$established" = 1 ]; then
        while read -r line; do problems+=("${line#fail: }"); done < <(grep '^fail:' <<<"$out" || true)
    fi
    grep -q '^result=PASS' <<<"$out" || [ ${#problems[@]} -gt 0 ] || problems+=("pcap check did not run: $out")
    if [ ${#problems[@]} -gt 0 ]; then
        while read -r line; do [ -z "$line" ] || problems+=("$line"); done < <(gw_warnings)
    fi

    local detail="(call ${call_s}s; media pkts:${pk:- none}; recordings:${figures}; ${state})${note}"
    if [ ${#problems[@]} -eq 0 ]; then
        result PASS "$detail"
    else
        local joined
        joined="$(printf '%s; ' "${problems[@]}")"
        result FAIL "$detail: ${joined%; }"
    fi
}

# ---------------------------------------------------------------------------- outer

main() {
    local host_net=0 direct=0 modes=() m
    while [ $# -gt 0 ]; do
        case "$1" in
            --selftest-checker) selftest_checker; return ;;
            --host-net) host_net=1 ;;
            --direct) direct=1 ;;
            --inner) run_mode "$2" "$3"; return ;;
            -h|--help) usage; return 0 ;;
            -*) die "unknown option $1" ;;
            *) modes+=("$1") ;;
        esac
        shift
    done
    [ ${#modes[@]} -gt 0 ] || read -r -a modes <<<"$ALL_MODES"
    for m in "${modes[@]}"; do mode_settings "$m"; done

    need_cmd baresip baresip-core
    need_cmd sox sox
    need_cmd tcpdump tcpdump
    need_cmd python3 python3
    need_cmd ip iproute2
    need_cmd ss iproute2
    need_cmd curl curl
    need_cmd timeout coreutils
    need_cmd unshare util-linux
    for m in g711 aufile sndfile account menu srtp dtls_srtp ice; do
        [ -f "$MODULE_DIR/$m.so" ] || die "baresip module $MODULE_DIR/$m.so is missing (dpkg -L baresip-core)"
    done
    python3 -c 'import tomllib' 2>/dev/null || die "python3 >= 3.11 is needed (tomllib)"

    # Build on the host: the namespaces have no network, and one build serves all modes.
    if [ "$direct" = 0 ]; then
        if [ -z "${RIPTIDE_BIN:-}" ]; then
            "$INTEROP_DIR/pair.sh" build || die "could not build the gateway (log: $OUT_DIR/build.log)"
        fi
        [ -x "$BIN" ] || die "no gateway binary at $BIN"
    fi

    mkdir -p "$LOG_ROOT"
    # s16 mono 8 kHz, the rate aufile is pinned to. The callee's tone outlasts any call.
    sox -n -r 8000 -c 1 -b 16 -e signed-integer "$LOG_ROOT/tone-caller.wav" synth "$CALL_SECONDS" sine 440 vol 0.5
    sox -n -r 8000 -c 1 -b 16 -e signed-integer "$LOG_ROOT/tone-callee.wav" synth $((MODE_TIMEOUT + 10)) sine 440 vol 0.5

    local netns_ok=1
    unshare --net true 2>/dev/null || netns_ok=0
    [ "$netns_ok" = 1 ] || log "unshare --net is not permitted here (not root?): non-ICE modes run on the host loopback, ICE modes fail"

    local passed=0 failed=0 dir name rc start line secs
    for m in "${modes[@]}"; do
        name="$m"; [ "$direct" = 0 ] || name="$m-direct"
        dir="$LOG_ROOT/$name"
        rm -rf "$dir"; mkdir -p "$dir"
        start=$(date +%s.%N)
        rc=0
        if is_ice "$m" || { [ "$host_net" = 0 ] && [ "$netns_ok" = 1 ]; }; then
            if [ "$netns_ok" = 1 ]; then
                BARESIP_IN_NETNS=1 timeout -k 5 "$MODE_TIMEOUT" unshare --net -- bash "$BS_DIR/run.sh" --inner "$m" "$direct" \
                    </dev/null >>"$dir/run.log" 2>&1 || rc=$?
            else
                printf 'FAIL %s needs a private network namespace (unshare --net), which is not permitted here\n' "$name" >"$dir/result"
            fi
        else
            timeout -k 5 "$MODE_TIMEOUT" bash "$BS_DIR/run.sh" --inner "$m" "$direct" </dev/null >>"$dir/run.log" 2>&1 || rc=$?
        fi
        secs="$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
        if [ -s "$dir/result" ]; then
            line="$(cat "$dir/result")"
        else
            line="FAIL $name (no result: the mode's run exited with status $rc$([ "$rc" != 124 ] || echo ", killed after ${MODE_TIMEOUT}s")) $(grep -E '^error' "$dir/run.log" | tail -n 1 || true)"
        fi
        line="${line/#PASS $name /PASS $name [${secs}s] }"
        line="${line/#FAIL $name /FAIL $name [${secs}s] }"
        echo "$line"
        if [ "${line%% *}" = PASS ]; then
            passed=$((passed + 1))
        else
            failed=$((failed + 1))
            echo "    logs: $dir/{caller,callee}.log$([ "$direct" = 1 ] || echo " $dir/pair/{a,b}.log") $dir/capture.pcap $dir/checks.txt $dir/run.log"
        fi
    done
    echo "baresip: $passed passed, $failed failed"
    [ "$failed" = 0 ]
}

main "$@"
