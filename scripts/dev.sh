#!/usr/bin/env bash
# Starts a single development node: embedded libSQL in ./data, a self-signed
# certificate generated on first start, open registration, XMPP on 5222/5223 and
# the HTTP API on 5280, all on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --release -p waddle -- --config config/waddle.toml "$@"
