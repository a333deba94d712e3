#!/usr/bin/env bash
# Idempotent setup for the waddle black-box interop suite.
#
# Creates tests/interop/.venv (ignored by git) and installs the pinned client
# dependencies from requirements.txt. Re-running is cheap: packages are only
# (re)installed when requirements.txt changed or an import is broken.
#
# Needs python3 (3.11+) and network access to PyPI. On Debian, if the venv
# module cannot bootstrap pip (package python3.X-venv missing), it is
# installed with apt-get (as root, or through sudo when available).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
REQS="$HERE/requirements.txt"
STAMP="$VENV/.requirements.sha256"
PYTHON="${PYTHON:-python3}"

log() { printf '[interop setup] %s\n' "$*" >&2; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    log "$PYTHON not found; install Python 3 first (apt-get install python3)"
    exit 1
fi

venv_usable() {
    [ -x "$VENV/bin/python" ] \
        && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1 \
        && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

install_venv_package() {
    if ! command -v apt-get >/dev/null 2>&1; then
        log "cannot create a virtualenv with $PYTHON and apt-get is not available"
        exit 1
    fi
    local ver sudo=""
    ver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
    log "installing python${ver}-venv with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "python${ver}-venv" >/dev/null \
        || $sudo apt-get install -y -qq python3-venv >/dev/null
}

create_venv() {
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" >/dev/null 2>&1 && venv_usable
}

if ! venv_usable; then
    log "creating virtualenv at $VENV"
    if ! create_venv; then
        # Debian splits ensurepip (and its bundled pip wheel) into python3.X-venv.
        install_venv_package
        if ! create_venv; then
            log "python3 -m venv still fails; see: $PYTHON -m venv $VENV"
            exit 1
        fi
    fi
fi

want="$(sha256sum "$REQS" | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ] \
    || ! "$VENV/bin/python" -c 'import slixmpp, pytest, pytest_asyncio, pytest_timeout' >/dev/null 2>&1; then
    log "installing pinned requirements"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$VENV/bin/python" -m pip install -q -r "$REQS"
    printf '%s\n' "$want" >"$STAMP"
else
    log "virtualenv up to date"
fi

# The JavaScript clients (XMPP over WebSocket with @xmpp/client).
bash "$HERE/js/setup.sh"
