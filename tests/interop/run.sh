#!/usr/bin/env bash
# Run the waddle black-box interop suite against a real server binary.
#
#   tests/interop/run.sh [pytest args...]
#
# Uses $WADDLE_BIN (default target/debug/waddle); build it first.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"

bash "$HERE/setup.sh" || { echo "interop setup failed" >&2; exit 2; }

cd "$ROOT"
"$HERE/.venv/bin/python" -m pytest -q tests/interop "$@"
exit $?
