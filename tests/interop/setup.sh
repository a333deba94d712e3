#!/usr/bin/env bash
# Idempotent setup for the waddle black-box interop suite.
#
# Creates tests/interop/.venv (ignored by git) and installs the pinned
# client-side dependencies. Safe to run repeatedly: it only re-installs when
# the requirement pins change (a stamp file records the last installed set).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
REQS="$HERE/requirements.txt"
STAMP="$VENV/.waddle-interop-reqs"
PYTHON="${PYTHON:-python3}"

log() { printf '[interop setup] %s\n' "$*" >&2; }

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    log "python3 not found; install it first (apt-get install python3)"
    exit 1
fi

# `python3 -m venv` on Debian needs the python3-venv (or python3.X-venv)
# package for ensurepip. Install it when missing (we run as root on CI).
ensure_venv_support() {
    if "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "python venv/ensurepip unavailable and apt-get not present"
        exit 1
    fi
    install_venv_package
}

install_venv_package() {
    if ! command -v apt-get >/dev/null 2>&1; then
        log "cannot create a virtualenv and apt-get is not present"
        exit 1
    fi
    local ver pkgs
    ver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
    log "installing python venv support (python${ver}-venv) via apt-get"
    local sudo=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    pkgs="python${ver}-venv"
    if ! $sudo apt-get install -y -qq "$pkgs" >/dev/null; then
        $sudo apt-get install -y -qq python3-venv >/dev/null
    fi
}

venv_usable() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1 \
        && "$VENV/bin/python" -m pip --version >/dev/null 2>&1
}

if ! venv_usable; then
    ensure_venv_support
    log "creating virtualenv at $VENV"
    rm -rf "$VENV"
    if ! "$PYTHON" -m venv "$VENV" || ! venv_usable; then
        # Debian ships ensurepip's wheels separately; a venv without pip means
        # the apt package is missing even though `import ensurepip` worked.
        rm -rf "$VENV"
        install_venv_package
        "$PYTHON" -m venv "$VENV"
    fi
fi

want="$(sha256sum "$REQS" | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" != "$have" ] || ! "$VENV/bin/python" -c 'import slixmpp, pytest, pytest_asyncio' >/dev/null 2>&1; then
    log "installing pinned requirements"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    "$VENV/bin/python" -m pip install -q -r "$REQS"
    printf '%s\n' "$want" >"$STAMP"
else
    log "virtualenv up to date"
fi
