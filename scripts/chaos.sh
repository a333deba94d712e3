#!/usr/bin/env bash
# Builds the server and the chaos harness, installs iproute2/nftables when missing (as
# root), and runs waddle-chaos with the given arguments (see `waddle-chaos --help`).
#   scripts/chaos.sh --profile ci
#   scripts/chaos.sh --faults none --duration 30
#   scripts/chaos.sh --profile soak --nodes 5 --duration 600
#   WADDLE_CLUSTER_REPLICAS=1 scripts/chaos.sh --expect-loss
# WADDLE_CLUSTER_REPLICAS / _HEARTBEAT_MS / _DOWN_AFTER_MS in this script's environment
# become --replicas / --heartbeat-ms / --down-after-ms (the harness never lets its own
# WADDLE_* environment reach the nodes).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/chaos-setup.sh
cargo build -p waddle -p waddle-chaos --locked

extra=()
[ -n "${WADDLE_CLUSTER_REPLICAS:-}" ] && extra+=(--replicas "$WADDLE_CLUSTER_REPLICAS")
[ -n "${WADDLE_CLUSTER_HEARTBEAT_MS:-}" ] && extra+=(--heartbeat-ms "$WADDLE_CLUSTER_HEARTBEAT_MS")
[ -n "${WADDLE_CLUSTER_DOWN_AFTER_MS:-}" ] && extra+=(--down-after-ms "$WADDLE_CLUSTER_DOWN_AFTER_MS")
exec target/debug/waddle-chaos --waddle-bin target/debug/waddle "${extra[@]}" "$@"
