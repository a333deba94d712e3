#!/usr/bin/env bash
# 1:1 chat and MUC with clients spread over a 3-node cluster (waddle-bench --hosts), next
# to the same runs against one node: server CPU per delivery (summed over the nodes for
# the cluster) and delivery exactness. Every run must deliver every message exactly
# once to exactly its recipients (the script fails otherwise); the figures are printed,
# never asserted (record them in docs/benchmarks.md).
#
#   scripts/bench-cluster.sh [path/to/waddle] [path/to/waddle-bench] [users] [seconds]
#
# Loopback only; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
WADDLE=${1:-target/release/waddle}
BENCH=${2:-target/release/waddle-bench}
USERS=${3:-50}
SECS=${4:-10}
DIR=$(mktemp -d /tmp/waddle-bench-cluster.XXXXXX)
SECRET=bench-cluster-secret-0123456789
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
ADMIN=bench-cluster-admin-token

# Polls (never sleeps blindly) until the three nodes agree on three members, all up,
# one ring epoch and every partition served: the cluster has finished forming and its
# partitions have moved, so the runs measure a settled cluster.
wait_converged() {
    for _ in $(seq 1 600); do
        if python3 - "$ADMIN" <<'PY'
import json, sys, urllib.request
views = []
for n in (1, 2, 3):
    req = urllib.request.Request(f"http://127.0.0.1:26{n}80/v1/cluster", headers={"Authorization": f"Bearer {sys.argv[1]}"})
    try:
        views.append(json.load(urllib.request.urlopen(req, timeout=2)))
    except Exception:
        sys.exit(1)
ok = all(len(v["nodes"]) == 3 and all(x["state"] == "up" for x in v["nodes"]) for v in views)
ok = ok and len({v["ring_epoch"] for v in views}) == 1 and sum(x["partitions"] for x in views[0]["nodes"]) == 256
sys.exit(0 if ok else 1)
PY
        then return 0; fi
        sleep 0.1
    done
    echo "the 3-node cluster did not converge" >&2
    exit 1
}

# node N: XMPP 26N22, HTTP 26N80, cluster 26N40 (N = 1..3); the lone node uses N = 9.
start_node() {
    local n=$1 seeds=$2 cluster=$3
    local env=(WADDLE_SERVER_NODE_ID=$n WADDLE_SERVER_DATA_DIR="$DIR/node$n"
        WADDLE_C2S_STARTTLS_PORT=26${n}22 WADDLE_C2S_DIRECT_TLS_PORT=26${n}23 WADDLE_HTTP_PORT=26${n}80
        WADDLE_LOG_LEVEL=warn WADDLE_RATE_LIMITS_ENABLED=false WADDLE_AUTH_MAX_REGISTRATIONS_PER_ADDRESS=1000000)
    if [ "$cluster" = yes ]; then
        env+=(WADDLE_CLUSTER_LISTEN=127.0.0.1:26${n}40 WADDLE_CLUSTER_SECRET=$SECRET WADDLE_AUTH_ADMIN_TOKEN=$ADMIN)
        [ -n "$seeds" ] && env+=(WADDLE_CLUSTER_SEEDS=$seeds)
    fi
    env "${env[@]}" "$WADDLE" --config config/waddle.toml >"$DIR/node$n.log" 2>&1 &
    pids+=("$!")
    for _ in $(seq 1 300); do
        if curl -fsS "http://127.0.0.1:26${n}80/health" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "${pids[-1]}" 2>/dev/null; then echo "node $n exited: $(tail -5 "$DIR/node$n.log")" >&2; exit 1; fi
        sleep 0.1
    done
    echo "node $n not ready" >&2
    exit 1
}

check() {
    python3 - "$1" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
bad = [f"{r[k]} {k}" for k in ("lost", "duplicated", "misrouted", "errors") if r[k]]
if r["delivered"] == 0:
    bad.append("nothing delivered")
if bad:
    sys.exit(f"bench-cluster FAILED ({r['label']}): " + ", ".join(bad))
print(f"  {r['label']}: delivered {r['delivered']}, server CPU {r['server_cpu_us_per_delivery']:.1f} us/delivery")
PY
}

run() {
    local out
    out=$("$BENCH" "$@" --user-prefix cb --users "$USERS" --duration "$SECS")
    echo "$out"
    check "$(tail -n 1 <<<"$out")"
}

echo "== 3-node cluster"
start_node 1 "" yes
start_node 2 127.0.0.1:26140 yes
start_node 3 127.0.0.1:26140 yes
wait_converged
HOSTS=127.0.0.1:26122,127.0.0.1:26222,127.0.0.1:26322
CLUSTER_PIDS="${pids[0]},${pids[1]},${pids[2]}"
"$BENCH" register --hosts $HOSTS --user-prefix cb --users "$USERS" >/dev/null
run chat --hosts $HOSTS --server-pid "$CLUSTER_PIDS" --window 4 --label cluster-chat
run muc --hosts $HOSTS --server-pid "$CLUSTER_PIDS" --label cluster-muc
cleanup
pids=()

echo "== one node"
start_node 9 "" no
"$BENCH" register --port 26922 --user-prefix cb --users "$USERS" >/dev/null
run chat --port 26922 --server-pid "${pids[0]}" --window 4 --label single-chat
run muc --port 26922 --server-pid "${pids[0]}" --label single-muc
echo "bench-cluster: every run delivered everything exactly once"
