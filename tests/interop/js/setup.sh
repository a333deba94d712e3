#!/usr/bin/env bash
# Idempotent setup of the interop suite's JavaScript clients: installs the pinned
# @xmpp/client (package-lock.json) into tests/interop/js/node_modules (ignored by git).
# Re-running is cheap: `npm ci` runs only when the lock file changed or an import
# is broken. Needs Node >= 20.10 and npm, and network access to the npm registry.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STAMP="$HERE/node_modules/.package-lock.sha256"

log() { printf '[interop js setup] %s\n' "$*" >&2; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "node and npm are needed (Node >= 20.10) for the XMPP-over-WebSocket tests"
    exit 1
fi
if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=10)?0:1)'; then
    log "Node $(node --version) is too old: @xmpp/client needs >= 20.10"
    exit 1
fi

cd "$HERE"
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ] || ! node --input-type=module -e 'await import("@xmpp/client")' >/dev/null 2>&1; then
    log "installing pinned packages (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
    printf '%s\n' "$want" >"$STAMP"
else
    log "node_modules up to date"
fi
