#!/usr/bin/env bash
# A real single-node Ray head on loopback, for trying `mtl-search submit` on one machine
# (and for tests/test_cluster.py).
#
#   cluster/local.sh start     start the head in the background; prints the --address to submit to
#   cluster/local.sh status    is it running? (the Ray dashboard's /api/version, then `ray status`)
#   cluster/local.sh stop      stop this head only (never other Ray instances on the machine)
#
# Run it from the environment where mtl-search is installed: the head's jobs run `python -m mtl_search`
# with the `python` found on PATH here.
#
# Settings (environment variables, defaults in brackets):
#   MTL_RAY_DIR             [/tmp/mtl_search_ray] Ray's --temp-dir for this head, plus head.pid and head.log.
#                           Keep it short (Ray puts unix sockets in it) and dedicated: a plain `ray.init()`
#                           elsewhere on the machine only joins heads recorded in the default /tmp/ray, so it
#                           never joins this one by accident.
#   MTL_RAY_PORT            [6390]  GCS port
#   MTL_DASHBOARD_PORT      [8265]  dashboard + Jobs API port (submit --address http://127.0.0.1:PORT)
#   MTL_RAY_CLIENT_PORT     [10001] Ray Client server port (outside the worker ports, 10002-19999)
#   MTL_RAY_AGENT_PORT      [52375] dashboard agent HTTP port (a local ray.init() takes Ray's default 52365)
#   MTL_RAY_CPUS            [all]   CPUs the head offers to trials
#   MTL_RAY_START_TIMEOUT   [90]    seconds to wait for the Jobs API to answer
#
# Security: every listening socket we can choose is bound to 127.0.0.1, but some Ray ports (GCS, raylet,
# object manager, metrics) listen on all interfaces whatever the flags say. What keeps the head closed is
# Ray's token authentication, which this script always turns on (RAY_AUTH_MODE=token). The token is
# RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (created, mode 600, if missing);
# `mtl-search submit/status/logs` read it from the same places. See cluster/README.md.
set -euo pipefail

DIR="${MTL_RAY_DIR:-/tmp/mtl_search_ray}"
PORT="${MTL_RAY_PORT:-6390}"
DASHBOARD_PORT="${MTL_DASHBOARD_PORT:-8265}"
CLIENT_PORT="${MTL_RAY_CLIENT_PORT:-10001}"
AGENT_PORT="${MTL_RAY_AGENT_PORT:-52375}"
CPUS="${MTL_RAY_CPUS:-}"
TIMEOUT="${MTL_RAY_START_TIMEOUT:-90}"
PYTHON="${PYTHON:-python}"
PID_FILE="$DIR/head.pid"
LOG_FILE="$DIR/head.log"
URL="http://127.0.0.1:$DASHBOARD_PORT"

die() { echo "local.sh: $*" >&2; exit 1; }

running() { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

# HTTP status of the Jobs API's version endpoint (000 when nothing answers). Python, not curl: it is
# certainly installed wherever Ray is.
api_status() {
    "$PYTHON" - "$URL/api/version" <<'PY' 2>/dev/null || echo 000
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=2).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except Exception:
    print("000")
PY
}

ensure_token() {
    [ -n "${RAY_AUTH_TOKEN:-}" ] && return 0
    local path="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    if [ ! -s "$path" ]; then
        mkdir -p "$(dirname "$path")"
        # 256 random bits, as `ray get-auth-token --generate` makes (which always writes ~/.ray/auth_token).
        (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$path")
        echo "local.sh: created an authentication token in $path"
    fi
}

start() {
    command -v ray >/dev/null || die "no 'ray' on PATH: activate the environment where mtl-search is installed"
    if running; then
        echo "local.sh: already running (pid $(cat "$PID_FILE")); submit to --address $URL"
        return 0
    fi
    mkdir -p "$DIR"
    ensure_token
    export RAY_AUTH_MODE=token
    local args=(--head --block --disable-usage-stats --temp-dir "$DIR"
                --node-ip-address 127.0.0.1 --port "$PORT"
                --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT"
                --ray-client-server-port "$CLIENT_PORT" --dashboard-agent-listen-port "$AGENT_PORT")
    [ -n "$CPUS" ] && args+=(--num-cpus "$CPUS")
    # --block keeps `ray start` in the foreground as the parent of every Ray process of this head, so
    # `stop` can end exactly this head by its pid (`ray stop` would end every Ray instance on the machine).
    # setsid: its own session, so a Ctrl-C or a signal meant for the caller's process group spares it.
    local detach=()
    command -v setsid >/dev/null && detach=(setsid)
    ${detach[@]+"${detach[@]}"} nohup ray start "${args[@]}" >"$LOG_FILE" 2>&1 </dev/null &
    echo $! >"$PID_FILE"
    local waited=0 code
    while :; do
        code="$(api_status)"
        # 200, or 401 when this curl sends no token: either way the Jobs API is up.
        if [ "$code" = 200 ] || [ "$code" = 401 ]; then break; fi
        if ! running; then
            tail -n 30 "$LOG_FILE" >&2 || true
            rm -f "$PID_FILE"
            die "the Ray head exited during start-up (log above, full log: $LOG_FILE); a port may be taken: set MTL_RAY_PORT / MTL_DASHBOARD_PORT"
        fi
        if [ "$waited" -ge "$TIMEOUT" ]; then
            tail -n 30 "$LOG_FILE" >&2 || true
            stop >/dev/null 2>&1 || true
            die "the Jobs API did not answer on $URL within ${TIMEOUT}s (full log: $LOG_FILE)"
        fi
        sleep 1
        waited=$((waited + 1))
    done
    echo "local.sh: Ray head running (pid $(cat "$PID_FILE"), temp dir $DIR, token authentication on)"
    echo "  dashboard: $URL"
    echo "  submit:    python -m mtl_search submit SPEC --address $URL --output /absolute/results/folder --wait"
}

status() {
    if ! running; then
        echo "local.sh: not running (no live pid in $PID_FILE)"
        return 1
    fi
    echo "local.sh: running (pid $(cat "$PID_FILE"), temp dir $DIR), Jobs API on $URL answers HTTP $(api_status)"
    RAY_AUTH_MODE=token ray status --address "127.0.0.1:$PORT" || true
}

stop() {
    if ! running; then
        rm -f "$PID_FILE"
        echo "local.sh: not running"
        return 0
    fi
    local pid waited=0
    pid="$(cat "$PID_FILE")"
    # SIGTERM makes `ray start --block` shut down the processes it started (GCS, raylet, dashboard, workers).
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$waited" -ge 60 ]; then
            echo "local.sh: the head did not stop within 30 s; killing pid $pid" >&2
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    rm -f "$PID_FILE"
    echo "local.sh: stopped (pid $pid)"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status   (settings: see the comments at the top of this file)" >&2; exit 2 ;;
esac
