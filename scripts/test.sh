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
cargo build -p waddle --locked
WADDLE_BIN="$PWD/target/debug/waddle" tests/interop/run.sh
