#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and integration tests of every
# crate, then the interop tests with a real XMPP client against a real waddle process.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== rustfmt"
cargo fmt --all -- --check

echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== unit and integration tests"
# As root, installs what the chaos harness's faults use (the packet-delay test needs iptables).
scripts/chaos-setup.sh
cargo test --workspace --locked

echo "== interop tests (slixmpp against a started node)"
cargo build -p waddle -p waddle-bench --locked
WADDLE_BIN="$PWD/target/debug/waddle" tests/interop/run.sh

echo "== load generator smoke run (nothing lost; no timing assertions)"
scripts/bench-smoke.sh target/debug/waddle target/debug/waddle-bench

echo "== load generator over a 3-node cluster (nothing lost, duplicated or misrouted)"
scripts/bench-cluster.sh target/debug/waddle target/debug/waddle-bench 20 2

echo "== chaos harness: baseline over a 3-node cluster, no faults (nothing lost, same order everywhere)"
cargo build -p waddle-chaos --locked
target/debug/waddle-chaos --waddle-bin target/debug/waddle --faults none --duration 20

echo "== chaos harness sees what it rules out: replication off, a node killed and its data wiped"
WADDLE_CLUSTER_REPLICAS=1 scripts/chaos.sh --expect-loss

echo "== chaos harness: ci profile (kill -9, SIGSTOP, partition, join, leave under load; nothing acknowledged lost)"
scripts/chaos.sh --profile ci --seed 42
