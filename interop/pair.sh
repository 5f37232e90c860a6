#!/usr/bin/env bash
# Start/stop/inspect the loopback gateway pair (docs: interop/README.md, ENGINEERING.md §3).
#   interop/pair.sh start    build release if needed, start B then A, wait for /healthz
#   interop/pair.sh stop     TERM both (KILL after a bounded wait), remove pid files
#   interop/pair.sh status   print each gateway's state; exit 0 only if both are healthy
#   interop/pair.sh build    only the "build release if needed" step of start
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib/common.sh"

# RIPTIDE_BIN / PAIR_CONFIG_DIR override the binary and config folder (used to test this kit
# with a stand-in binary); with RIPTIDE_BIN set, no cargo build happens.
BIN="${RIPTIDE_BIN:-$REPO_ROOT/target/release/riptide}"
CONFIG_DIR="${PAIR_CONFIG_DIR:-$REPO_ROOT/config}"
HEALTH_TIMEOUT="${PAIR_HEALTH_TIMEOUT:-30}"
STOP_GRACE="${PAIR_STOP_GRACE:-10}"
# PAIR_OUT_DIR moves the pid files, gateway logs and A's token (default interop/out), so that a
# second pair (e.g. one per baresip mode, inside its own network namespace) never touches the
# pid files of the default pair.
PAIR_OUT="${PAIR_OUT_DIR:-$OUT_DIR}"
TOKEN_FILE="$PAIR_OUT/a-to-b.token"

admin_port() { if [ "$1" = a ]; then echo 9070; else echo 9072; fi; }
config_of() { echo "$CONFIG_DIR/pair-$1.toml"; }
pid_file() { echo "$PAIR_OUT/$1.pid"; }
log_file() { echo "$PAIR_OUT/$1.log"; }

# running_pid NAME: print the pid if the pid file names a live riptide process.
running_pid() {
    local pf pid
    pf="$(pid_file "$1")"
    [ -f "$pf" ] || return 1
    pid="$(cat "$pf")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q riptide || return 1
    echo "$pid"
}

healthy() { [ "$(curl -fsS --max-time 2 "http://127.0.0.1:$(admin_port "$1")/healthz" 2>/dev/null)" = ok ]; }

build_if_needed() {
    local newer=""
    [ -z "${RIPTIDE_BIN:-}" ] || return 0
    if [ -x "$BIN" ]; then
        newer="$(find "$REPO_ROOT/src" "$REPO_ROOT/Cargo.toml" "$REPO_ROOT/Cargo.lock" -newer "$BIN" -print -quit 2>/dev/null || true)"
        [ -n "$newer" ] || return 0
        log "release binary is older than $newer: rebuilding"
    else
        log "no release binary: building"
    fi
    need_cmd cargo cargo
    (cd "$REPO_ROOT" && cargo build --release --locked) >"$OUT_DIR/build.log" 2>&1 || {
        tail -n 40 "$OUT_DIR/build.log" >&2
        die "cargo build --release --locked failed (full log: $OUT_DIR/build.log)"
    }
}

check_ports_free() {
    local busy="" spec proto port users
    for spec in udp:5070 tcp:5070 udp:5072 tcp:5072 udp:5080 tcp:5080 udp:4433 udp:4434 tcp:9070 tcp:9072 tcp:8443; do
        proto="${spec%%:*}"; port="${spec##*:}"
        users="$(port_users "$proto" "$port")"
        if [ -n "$users" ]; then
            busy="$busy\n  $proto/$port: $users"
        fi
    done
    [ -z "$busy" ] || die "$(printf 'ports needed by the pair are in use:%b' "$busy")"
}

# launch NAME: start one gateway in the background and wait for its /healthz.
launch() {
    local name="$1" pid deadline cfg
    cfg="$(config_of "$name")"
    [ -f "$cfg" ] || die "missing config $cfg"
    printf '\n==== %s start %s ====\n' "$name" "$(date -Is)" >>"$(log_file "$name")"
    (cd "$REPO_ROOT" && exec "$BIN" serve --config "$cfg") </dev/null >>"$(log_file "$name")" 2>&1 &
    pid=$!
    echo "$pid" >"$(pid_file "$name")"
    deadline=$(( $(date +%s) + HEALTH_TIMEOUT ))
    until healthy "$name"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$(pid_file "$name")"
            tail -n 30 "$(log_file "$name")" >&2
            die "gateway $name (pid $pid) exited during start-up; log: $(log_file "$name")"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            tail -n 30 "$(log_file "$name")" >&2
            stop_pid "$pid" 5
            rm -f "$(pid_file "$name")"
            die "gateway $name not healthy on http://127.0.0.1:$(admin_port "$name")/healthz within ${HEALTH_TIMEOUT}s; log: $(log_file "$name")"
        fi
        sleep 0.2
    done
    log "gateway $name up (pid $pid, admin http://127.0.0.1:$(admin_port "$name"))"
}

# make_stir_pki: the test STI PKI gateway B signs outbound SIP calls with (config/pair-b.toml
# [stir]); shared by every pair of this checkout, made once.
make_stir_pki() {
    local dir="$OUT_DIR/stir"
    [ -s "$dir/sp-chain.pem" ] && [ -s "$dir/sp-leaf.key" ] && return 0
    "$BIN" stir pki --dir "$dir" --spc 1234 >"$OUT_DIR/stir-pki.log" 2>&1 \
        || { cat "$OUT_DIR/stir-pki.log" >&2; die "riptide stir pki failed"; }
}

mint_token() {
    local tmp="$TOKEN_FILE.tmp"
    (cd "$REPO_ROOT" && "$BIN" token mint --config "$(config_of b)" --subject gateway-a \
        --scope "calls:write tgs:read handlers:write stir:verstat") >"$tmp" 2>"$PAIR_OUT/token-mint.log" \
        || { cat "$PAIR_OUT/token-mint.log" >&2; rm -f "$tmp"; die "riptide token mint failed"; }
    [ -s "$tmp" ] || { rm -f "$tmp"; die "riptide token mint printed no token"; }
    chmod 600 "$tmp"
    mv "$tmp" "$TOKEN_FILE"
}

cmd_start() {
    mkdir -p "$OUT_DIR" "$PAIR_OUT"
    need_cmd curl curl
    need_cmd ss iproute2
    local pa pb
    pa="$(running_pid a || true)"; pb="$(running_pid b || true)"
    if [ -n "$pa" ] && [ -n "$pb" ] && healthy a && healthy b; then
        log "pair already running (a pid $pa, b pid $pb)"
        return 0
    fi
    # Half-started or unhealthy leftovers of ours: stop them, then start cleanly.
    if [ -n "$pa$pb" ]; then
        log "stopping a partial/unhealthy pair first"
        cmd_stop
    fi
    rm -f "$(pid_file a)" "$(pid_file b)"
    build_if_needed
    check_ports_free
    make_stir_pki
    launch b
    mint_token
    launch a
}

cmd_stop() {
    local name pid
    for name in a b; do
        if pid="$(running_pid "$name")"; then
            log "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            if ! wait_pid_exit "$pid" "$STOP_GRACE"; then
                log "$name did not exit within ${STOP_GRACE}s: KILL"
                kill -KILL "$pid" 2>/dev/null || true
                wait_pid_exit "$pid" 5 || die "could not kill $name (pid $pid)"
            fi
        fi
        rm -f "$(pid_file "$name")"
    done
}

cmd_status() {
    local name pid rc=0
    for name in a b; do
        if pid="$(running_pid "$name")"; then
            if healthy "$name"; then
                echo "$name: running (pid $pid), healthz ok, admin http://127.0.0.1:$(admin_port "$name")"
            else
                echo "$name: running (pid $pid), healthz NOT ok"
                rc=1
            fi
        else
            echo "$name: stopped"
            rc=1
        fi
    done
    return "$rc"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    build) mkdir -p "$OUT_DIR"; build_if_needed ;;
    *) echo "usage: $0 start|stop|status|build" >&2; exit 2 ;;
esac
