#!/usr/bin/env bash
# A short run of the load generator against a freshly started node: registration,
# SCRAM and token logins, 1:1 chat (closed and open loop), MUC fan-out and idle
# sessions, small N and a few seconds each. It asserts that every message reached
# exactly its intended recipients (zero lost, zero duplicated, zero misrouted, counted
# per message and recipient) and zero errors; it asserts no timings: figures come from
# scripts/bench.sh.
#
# The same runs with XEP-0198 stream management on every session (--sm) also assert
# that the server acknowledged everything each session sent (sm_unacked 0, sm_acked > 0,
# no SM protocol errors).
#
#   scripts/bench-smoke.sh [path/to/waddle] [path/to/waddle-bench]
set -euo pipefail
cd "$(dirname "$0")/.."
WADDLE=${1:-target/debug/waddle}
BENCH=${2:-target/debug/waddle-bench}
DIR=$(mktemp -d /tmp/waddle-bench-smoke.XXXXXX)
# Ports of their own, on loopback, so a dev node on the defaults does not interfere.
C2S=25322 DIRECT=25323 HTTP=25380

WADDLE_SERVER_DATA_DIR="$DIR" WADDLE_C2S_STARTTLS_PORT=$C2S WADDLE_C2S_DIRECT_TLS_PORT=$DIRECT \
WADDLE_HTTP_PORT=$HTTP WADDLE_LOG_LEVEL=warn WADDLE_RATE_LIMITS_ENABLED=false \
WADDLE_AUTH_MAX_REGISTRATIONS_PER_ADDRESS=1000000 \
    "$WADDLE" --config config/waddle.toml >"$DIR/server.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    if (exec 3<>/dev/tcp/127.0.0.1/$C2S) 2>/dev/null; then break; fi
    sleep 0.1
done

run() {
    echo "== waddle-bench $*"
    local scenario=$1 out
    shift
    # Options given to run come last and win over these.
    out=$("$BENCH" "$scenario" --port $C2S --api http://127.0.0.1:$HTTP --server-pid $PID --user-prefix smoke "$@")
    echo "$out"
    python3 - "$(tail -n 1 <<<"$out")" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
problems = []
for key in ("lost", "duplicated", "misrouted"):
    if r[key] != 0:
        problems.append(f"{r[key]} {key}")
if r["errors"] != 0:
    problems.append(f"{r['errors']} errors")
if r["delivered"] == 0:
    problems.append("nothing delivered")
if r.get("sm"):
    if r["sm_errors"] != 0:
        problems.append(f"{r['sm_errors']} stream management errors")
    if r["sm_unacked"] != 0:
        problems.append(f"{r['sm_unacked']} stanzas never acknowledged")
    if r["scenario"] != "login" and r["sm_acked"] == 0:
        problems.append("no stanza acknowledged")
if problems:
    sys.exit(f"bench smoke FAILED ({r['label']}): " + ", ".join(problems))
PY
}

run register --users 20
run login --users 10 --duration 2 --label login-scram
run login --users 10 --duration 2 --auth token --label login-token
run login --users 5 --duration 1 --tls direct --port $DIRECT --label login-direct-tls
run chat --users 20 --duration 3 --window 4 --label chat-closed
run chat --users 20 --duration 3 --rate 500 --label chat-open
run muc --users 20 --duration 3 --label muc
run idle --users 20 --label idle

run login --users 10 --duration 2 --sm --label login-sm
run chat --users 20 --duration 3 --window 4 --sm --label chat-closed-sm
run chat --users 20 --duration 3 --rate 500 --sm --sm-request-every 1 --label chat-open-sm
run muc --users 20 --duration 3 --sm --label muc-sm
run idle --users 20 --sm --label idle-sm
echo "bench smoke: all runs delivered everything exactly once, with and without stream management"
