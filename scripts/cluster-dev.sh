#!/usr/bin/env bash
# Starts a 3-node development cluster on 127.0.0.1 (config/cluster/node{1,2,3}.toml):
#   node 1: XMPP 5222/5223, HTTP 5280, cluster 7401 (bootstraps the cluster)
#   node 2: XMPP 5232/5233, HTTP 5290, cluster 7402 (joins through node 1)
#   node 3: XMPP 5242/5243, HTTP 5300, cluster 7403 (joins through node 1)
# Data in ./data/cluster/node{1,2,3}, logs in ./data/cluster/node{N}.log. Any client
# may use any node: accounts, rooms and messages are shared. Ctrl-C stops all three.
#
#   scripts/cluster-dev.sh            build (debug) and start
#   WADDLE_PROFILE=release scripts/cluster-dev.sh
#
# Then: target/debug/waddle cluster status --config config/cluster/node1.toml
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${WADDLE_PROFILE:-debug}"
if [ "$profile" = release ]; then cargo build --release -p waddle; else cargo build -p waddle; fi
bin="target/$profile/waddle"
mkdir -p data/cluster
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM
for n in 1 2 3; do
  "$bin" --config "config/cluster/node$n.toml" >"data/cluster/node$n.log" 2>&1 &
  pids+=("$!")
  port=$((5280 + (n - 1) * 10))
  # A node answers /health once it is a member that knows the ring.
  for _ in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then break; fi
    if ! kill -0 "${pids[-1]}" 2>/dev/null; then echo "node $n exited; see data/cluster/node$n.log" >&2; exit 1; fi
    sleep 0.1
  done
  echo "node $n up (HTTP 127.0.0.1:$port)"
done
"$bin" cluster status --config config/cluster/node1.toml
echo "cluster running; Ctrl-C to stop"
wait
