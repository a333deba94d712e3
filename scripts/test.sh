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
cargo test --workspace --locked

echo "== interop tests (slixmpp against a started node)"
cargo build -p waddle -p waddle-bench --locked
WADDLE_BIN="$PWD/target/debug/waddle" tests/interop/run.sh

echo "== load generator smoke run (nothing lost; no timing assertions)"
scripts/bench-smoke.sh target/debug/waddle target/debug/waddle-bench

echo "== load generator over a 3-node cluster (nothing lost, duplicated or misrouted)"
scripts/bench-cluster.sh target/debug/waddle target/debug/waddle-bench 20 2
