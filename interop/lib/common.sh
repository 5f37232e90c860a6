#!/usr/bin/env bash
# Shared helpers for the interop kit. Source it; do not run it.
# shellcheck shell=bash

# Absolute paths, whatever the caller's cwd.
INTEROP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_ROOT="$(cd "$INTEROP_DIR/.." && pwd)"
OUT_DIR="$INTEROP_DIR/out"
export INTEROP_DIR REPO_ROOT OUT_DIR

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

_APT_UPDATED=0
# need_cmd CMD PACKAGE: install PACKAGE with apt when CMD is missing; fail loudly if that fails.
need_cmd() {
    local cmd="$1" pkg="$2"
    command -v "$cmd" >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || die "'$cmd' is missing and apt-get is not available to install '$pkg'"
    log "installing $pkg (for $cmd)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null 2>&1; then
        if [ "$_APT_UPDATED" = 0 ]; then
            apt-get update -qq >/dev/null 2>&1 || true
            _APT_UPDATED=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null \
            || die "could not install package '$pkg' (needed for '$cmd')"
    fi
    command -v "$cmd" >/dev/null 2>&1 || die "package '$pkg' installed but '$cmd' is still missing"
}

# port_users PROTO PORT: print the listening/bound sockets on 127.0.0.1/any PORT (proto udp|tcp).
port_users() {
    local proto="$1" port="$2" flag
    if [ "$proto" = udp ]; then flag=-Hlnup; else flag=-Hlntp; fi
    ss "$flag" "sport = :$port" 2>/dev/null || true
}

port_bound() { [ -n "$(port_users "$1" "$2")" ]; }

# wait_port_bound PROTO PORT TIMEOUT_S [PID]: poll until something binds PORT.
# If PID is given and that process dies first, fail immediately.
wait_port_bound() {
    local proto="$1" port="$2" limit="$3" pid="${4:-}" deadline
    deadline=$(( $(date +%s) + limit ))
    until port_bound "$proto" "$port"; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}

# wait_pid_exit PID TIMEOUT_S: poll until PID has exited; return 1 on timeout.
wait_pid_exit() {
    local pid="$1" limit="$2" deadline
    deadline=$(( $(date +%s) + limit ))
    while kill -0 "$pid" 2>/dev/null; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}

# stop_pid PID [GRACE_S]: TERM, then KILL after GRACE_S; reaps if it is our child.
stop_pid() {
    local pid="$1" grace="${2:-5}"
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_pid_exit "$pid" "$grace"; then
        kill -KILL "$pid" 2>/dev/null || true
        wait_pid_exit "$pid" 5 || true
    fi
    wait "$pid" 2>/dev/null || true
}

# metric_sum URL NAME [LABEL_FILTER]: sum of all samples of NAME (optionally only lines containing
# LABEL_FILTER, e.g. 'dir="sip_to_quic"'); prints 0 when absent.
metric_sum() {
    local url="$1" name="$2" filter="${3:-}"
    curl -fsS --max-time 3 "$url" 2>/dev/null | awk -v n="$name" -v f="$filter" '
        $0 ~ /^#/ { next }
        { split($1, a, "{"); if (a[1] != n) next; if (f != "" && index($1, f) == 0) next; s += $NF }
        END { printf "%.0f\n", s + 0 }'
}

# start_capture PCAP FILTER: start tcpdump on lo in the background; sets CAPTURE_PID.
# Returns once tcpdump reports it is listening (polled, bounded).
start_capture() {
    local pcap="$1" filter="$2" err="$1.stderr" deadline
    need_cmd tcpdump tcpdump
    rm -f "$pcap" "$err"
    tcpdump -i lo -n -U -s "${CAPTURE_SNAPLEN:-2048}" -B 16384 -w "$pcap" "$filter" 2>"$err" &
    CAPTURE_PID=$!
    deadline=$(( $(date +%s) + 10 ))
    until grep -q 'listening on' "$err" 2>/dev/null; do
        kill -0 "$CAPTURE_PID" 2>/dev/null || die "tcpdump failed: $(cat "$err")"
        [ "$(date +%s)" -lt "$deadline" ] || die "tcpdump did not start listening within 10 s"
        sleep 0.05
    done
}

# stop_capture: stop the tcpdump started by start_capture; prints its drop statistics line.
stop_capture() {
    [ -n "${CAPTURE_PID:-}" ] || return 0
    kill -INT "$CAPTURE_PID" 2>/dev/null || true
    wait_pid_exit "$CAPTURE_PID" 10 || kill -KILL "$CAPTURE_PID" 2>/dev/null || true
    wait "$CAPTURE_PID" 2>/dev/null || true
    CAPTURE_PID=
}

# ensure_tone: a 2 s 440 Hz G.711 mu-law raw file for SIPp's rtp_stream; prints its path.
ensure_tone() {
    local f="$OUT_DIR/tone-440hz.ulaw"
    mkdir -p "$OUT_DIR"
    if [ ! -s "$f" ]; then
        python3 "$INTEROP_DIR/lib/mktone.py" "$f"
    fi
    printf '%s\n' "$f"
}

# pair_pids: the pids recorded in interop/out/{a,b}.pid (empty when absent), on one line.
pair_pids() { cat "$OUT_DIR/a.pid" "$OUT_DIR/b.pid" 2>/dev/null | tr '\n' ' ' || true; }

# Start the pair unless it runs (sets PAIR_STARTED/PAIR_OWNED_PIDS); pair_release stops it again
# only if we started it and the pid files still name the processes we started (several engineers
# share the machine: a pair someone else restarted meanwhile is left alone).
PAIR_STARTED=0; PAIR_OWNED_PIDS=""
pair_acquire() {
    if "$INTEROP_DIR/pair.sh" status >/dev/null 2>&1; then
        log "using the running gateway pair (pids $(pair_pids))"
        return 0
    fi
    PAIR_STARTED=1
    "$INTEROP_DIR/pair.sh" start || die "could not start the gateway pair (see $OUT_DIR/a.log, b.log)"
    PAIR_OWNED_PIDS="$(pair_pids)"
}
pair_release() {
    [ "$PAIR_STARTED" = 1 ] || return 0
    if [ "$(pair_pids)" = "$PAIR_OWNED_PIDS" ]; then
        "$INTEROP_DIR/pair.sh" stop || true
    else
        log "the pair was restarted by someone else during the run (pids now $(pair_pids)); leaving it running"
    fi
}
