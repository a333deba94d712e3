#!/usr/bin/env bash
# Reference benchmark: the same waddle-bench scenarios against waddle, ejabberd 23.01 and
# Prosody 0.12 (Debian bookworm packages: ejabberd 23.01-1, prosody 0.12.3-1+deb12u1) in
# one run, then a comparison table.
#
#   scripts/bench-reference.sh [run]      install, build, then for each server in turn:
#                                         start it, preflight it, provision users, run
#                                         every scenario, stop it; finally print the
#                                         comparison
#   scripts/bench-reference.sh start      start all three at once, provision, preflight,
#                                         print the pids and wait HOLD_SECS (default 600)
#                                         for manual runs; Ctrl-C stops them
#   scripts/bench-reference.sh preflight  start all three, run the stdlib XMPP check
#                                         (STARTTLS, XEP-0077, SCRAM, MUC join) and stop
#   scripts/bench-reference.sh compare    print the table for $BENCH_DIR/results.jsonl
#
# Knobs (environment):
#   BENCH_DIR=/tmp/waddle-bench-ref  work dir: configs, data, logs, results.jsonl
#   MAM=on|off|both      message archiving on all three (default on; see below)
#   SM=off|on            XEP-0198 stream management (default off): SM=on loads ejabberd's
#                        mod_stream_mgmt and runs every session-holding scenario (login,
#                        chat, muc, idle) with waddle-bench --sm; the JSON lines get ref_sm.
#                        Prosody 0.12 has no stream management in core (mod_smacks is a
#                        community module), so SM=on refuses SERVERS with prosody. Put
#                        SM=on and SM=off runs in different BENCH_DIRs: `compare` does not
#                        tell them apart
#   SERVERS="waddle ejabberd prosody"   which servers, in this order
#   SCENARIOS="login chat-closed chat-open muc idle"
#   QUICK=1              smoke pass: few users, 5 s per scenario
#   LOGIN_USERS LOGIN_DURATION CHAT_USERS CHAT_DURATION CHAT_WINDOW OPEN_USERS OPEN_RATE
#   OPEN_DURATION MUC_USERS MUC_DURATION MUC_RATE IDLE_USERS IDLE_DURATION
#                        per-scenario sizes. Defaults: login 200 users; chat-closed 50
#                        users (window: the generator's default, 1); chat-open 50 users
#                        at 2000 msg/s; muc 50 occupants (closed loop unless MUC_RATE);
#                        idle 2000 sessions; 20 s each. QUICK=1: 20 / 10 / 10 at 200 msg/s
#                        / 10 / 100, 5 s each. The open-files limit is raised for idle.
#   AUTH=scram-sha-256   SASL mechanism for every server (AUTH_<SERVER> overrides one)
#   TLS_MODE=starttls    for every server (waddle requires TLS before authentication)
#   PROVISION=ibr        ibr: waddle-bench register (XEP-0077), falling back to the rest on
#                        failure; http: waddle POST /v1/accounts, ejabberd mod_http_api
#                        (then ejabberdctl), prosodyctl; ctl: ejabberdctl / prosodyctl only
#   SETTLE_MAX=60        before each scenario, wait up to this long for the server to
#                        drop under 5 % of a core (leftover work of the previous one)
#   RUN_SLACK=120        seconds each generator run may take beyond its --duration
#   BUILD=1              run `cargo build --release -p waddle-bench -p waddle` first
#   BENCH_GEN_BIN, WADDLE_BIN   binaries (default target/release/{waddle-bench,waddle})
#   BENCH_WADDLE_PORT=5222 BENCH_WADDLE_TLS_PORT=5223 BENCH_WADDLE_HTTP_PORT=5280
#   EJABBERD_PORT=15222 EJABBERD_HTTP_PORT=15280 EJABBERD_NODE=waddlebench@localhost
#   PROSODY_PORT=25222
#   EJABBERD_DB=mnesia|sqlite  ejabberd's storage for everything (accounts, rosters,
#                        offline, rooms, MAM): Mnesia (package default) or one SQLite file
#                        (installs erlang-p1-sqlite3; closer to waddle's libSQL)
#   EJABBERD_ERL_OPTIONS extra erl flags; default "+sbwt none +sbwtdcpu none +sbwtdio none"
#                        (see below); set it to "" for the Debian package's behaviour
#   (Script knobs never start with WADDLE_: the waddle binary rejects unknown WADDLE_* vars.)
#
# What is configured, and why (templates: bench/reference/ejabberd.yml.in,
# bench/reference/prosody.cfg.lua.in; each server gets its own dirs under $BENCH_DIR, wiped
# at every start so every run begins from empty databases):
# - All three serve domain `localhost` with MUC on `muc.localhost`, c2s on 127.0.0.1 only:
#   waddle 5222 (direct TLS 5223, HTTP 5280), ejabberd 15222 (mod_http_api on 15280, used
#   only by the provisioning fallback), Prosody 25222. No s2s listener anywhere.
# - One self-signed EC P-256 certificate for `localhost`, made here with openssl, is given
#   to all three (waddle's own generated certificate is P-256 too), so TLS handshakes cost
#   the same key operations. Every scenario uses STARTTLS.
# - No rate limits or traffic shapers: waddle WADDLE_RATE_LIMITS_ENABLED=false; ejabberd
#   listener `shaper: none`, `c2s_shaper: none`, no MUC shapers, no mod_fail2ban /
#   mod_pres_counter; Prosody without mod_limits. Stanza limit 256 KiB on all three.
# - Listen backlog 128 on every c2s port: what waddle's tokio listeners get and Prosody's
#   default; ejabberd's own default is 5 (a login storm then overflows the accept queue:
#   SYN cookies and 1 s retransmits in the latency tail), raised to 128 here.
# - TCP_NODELAY on client sockets everywhere: waddle and ejabberd set it; Prosody gets
#   network_settings.nagle = false (its default keeps Nagle on, which adds ~40 ms
#   delayed-ACK stalls to request/response traffic). Prosody keeps its default of
#   deferring writes to the next event-loop turn (opportunistic_writes = false).
# - Open XEP-0077 in-band registration without throttling: waddle
#   auth.in_band_registration; ejabberd mod_register `access: register` (allow all) and
#   `registration_timeout: infinity`; Prosody `allow_registration`, no
#   min_seconds_between_registrations / registration_throttle_max (loopback is on
#   mod_register_limits' default allowlist anyway).
# - SCRAM-SHA-256 credentials, 4096 iterations, on all three: waddle
#   auth.scram_iterations=4096; ejabberd `auth_password_format: scram` + `auth_scram_hash:
#   sha256` (4096 is ejabberd's fixed count); Prosody internal_hashed with `password_hash =
#   "SHA-256"` (supported by 0.12.3's mod_auth_internal_hashed although not in the 0.12
#   docs; it then offers SCRAM-SHA-256 only) and `default_iteration_count = 4096`. So
#   logins use --auth scram-sha-256 everywhere (set AUTH_PROSODY=scram-sha-1 together with
#   removing password_hash from the template to measure Prosody's documented default).
# - Module sets trimmed to what waddle implements: roster, presence, offline storage,
#   disco, ping, version, vCard, IBR, MUC, MAM. No carbons, PEP/pubsub, CSI, blocking,
#   s2s; stream management only with SM=on (ejabberd's mod_stream_mgmt with its defaults).
# - MAM: waddle archives 1:1 chat for both parties and every room. MAM=on (the default)
#   turns on ejabberd mod_mam (`default: always`, rooms `mam: true`) and Prosody mod_mam
#   (`default_archive_policy`) + mod_muc_mam (`muc_log_all_rooms`); MAM=off runs them
#   without archive modules and waddle with WADDLE_ARCHIVE_ENABLED=false. A waddle whose
#   config has no [archive] section (older builds) cannot switch archiving off: it then runs
#   once and its MAM=on numbers are repeated in the MAM=off table, flagged there.
# - Logging at warning level on all three (waddle WADDLE_LOG_LEVEL=warn).
#
# Non-equivalences that remain (read the numbers with these in mind):
# - Storage engines differ: waddle libSQL (SQLite file, batched archive writes), ejabberd
#   Mnesia by default (its package default; the archive table is disc_only_copies/dets,
#   which caps 1:1 chat with MAM at a few hundred messages/s here) or SQLite with
#   EJABBERD_DB=sqlite (one connection, one INSERT per archived message), Prosody flat
#   files (mod_storage_internal). Prosody's per-archive quota (1000 items, then
#   truncation) is raised to 1e8 because the other two have no such quota.
# - ejabberd runs on the BEAM (+K true +P 250000 from ejabberdctl) with scheduler
#   busy-waiting turned off (+sbwt none +sbwtdcpu none +sbwtdio none): by default BEAM
#   schedulers spin after each burst of work, and /proc bills the spinning to ejabberd as
#   server CPU (QUICK chat-open at 200 msg/s with MAM: about 6,400 us per delivery
#   spinning vs 1,000 without). tokio's and Prosody's event loops park instead. Set
#   EJABBERD_ERL_OPTIONS="" to measure the packaged default. Prosody is single-threaded
#   Lua (one core at most); waddle and the BEAM use both cores. The load generator runs on the same
#   2-core machine and competes for CPU (its own share is gen_cpu_pct).
# - Room creation is the same on all three: the first joiner gets status 201 and the room
#   stays locked until the owner submits the (empty) instant-room form (checked by the
#   preflight on each). Rooms are temporary; ejabberd keeps their archive when they empty
#   (clear_archive_on_room_destroy: false) as waddle and Prosody do.
# - SASL lists differ but not the mechanism used: waddle offers SCRAM-SHA-256, -SHA-1 and
#   PLAIN; ejabberd SCRAM-SHA-256(-PLUS) and PLAIN; Prosody SCRAM-SHA-256 and PLAIN (no
#   -PLUS: no tls-unique under TLS 1.3).
# - ejabberd and Prosody run as their package users (ejabberd, prosody), switched with
#   setpriv (not su, whose pam_limits would drop the open-files limit to 1024): $BENCH_DIR
#   must be reachable by them (it is chmod 755; don't put it under /root).
#
# Debian's own services: the packages' postinst scripts try to start ejabberd/prosody
# with /etc configs listening on 5222 (denied by policy-rc.d in containers). This script
# stops them if they run (systemctl, else /etc/init.d) so they cannot hold 5222, then runs
# its own instances: ejabberd through `ejabberdctl --config-dir/--config/--spool/--logs
# --node $EJABBERD_NODE` (own Erlang node name, so `ejabberdctl` commands reach this
# instance only; the cookie is the ejabberd user's ~/.erlang.cookie), Prosody as
# `prosody --config FILE -F` in the background. (Prosody prints a lua-unbound notice:
# harmless, it only matters for s2s DNS.)
#
# Server pids (passed to waddle-bench --server-pid; also written to $BENCH_DIR/*.pid):
#   waddle   the target/release/waddle process started here
#   ejabberd pgrep -u ejabberd -f "beam.smp.*-sname $EJABBERD_NODE( |$)"
#   prosody  $BENCH_DIR/prosody/prosody.pid (the lua5.4 process)
#
# Results: one JSON line per generator run in $BENCH_DIR/results.jsonl (the previous
# file is kept as results.jsonl.prev), with the keys server, mam, ref_scenario, auth,
# tls, exit_code (and ejabberd_db, waddle_mam_switch) added; each run's full output in
# $BENCH_DIR/runs/, server logs in $BENCH_DIR/<server>/.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
REF="$ROOT/bench/reference"
WORK="${BENCH_DIR:-/tmp/waddle-bench-ref}"
CMD="${1:-run}"

MAM="${MAM:-on}"
SM="${SM:-off}"
SERVERS="${SERVERS:-waddle ejabberd prosody}"
SERVERS="${SERVERS//,/ }"
SCENARIOS="${SCENARIOS:-login chat-closed chat-open muc idle}"
SCENARIOS="${SCENARIOS//,/ }"
QUICK="${QUICK:-0}"

HOST=127.0.0.1
DOMAIN=localhost
MUC_DOMAIN=muc.localhost
PREFIX=bench
PASSWORD=benchpass
AUTH="${AUTH:-scram-sha-256}"
TLS_MODE="${TLS_MODE:-starttls}"
RUN_SLACK="${RUN_SLACK:-120}"
SETTLE_MAX="${SETTLE_MAX:-60}"
BUILD="${BUILD:-1}"
HOLD_SECS="${HOLD_SECS:-600}"
PROVISION="${PROVISION:-ibr}"
EJABBERD_DB="${EJABBERD_DB:-mnesia}"
case $MAM in on | off | both) ;; *) echo "MAM must be on, off or both" >&2; exit 2 ;; esac
case $EJABBERD_DB in mnesia | sqlite) ;; *) echo "EJABBERD_DB must be mnesia or sqlite" >&2; exit 2 ;; esac
case $SM in on | off) ;; *) echo "SM must be on or off" >&2; exit 2 ;; esac
if [ "$SM" = on ] && [[ " $SERVERS " == *" prosody "* ]]; then
    echo "SM=on: Prosody 0.12 has no stream management in core; leave prosody out of SERVERS" >&2
    exit 2
fi

W_PORT="${BENCH_WADDLE_PORT:-5222}"
W_TLS_PORT="${BENCH_WADDLE_TLS_PORT:-5223}"
W_HTTP_PORT="${BENCH_WADDLE_HTTP_PORT:-5280}"
EJ_PORT="${EJABBERD_PORT:-15222}"
EJ_HTTP_PORT="${EJABBERD_HTTP_PORT:-15280}"
EJ_NODE="${EJABBERD_NODE:-waddlebench@localhost}"
EJ_ERL_OPTIONS="${EJABBERD_ERL_OPTIONS-+sbwt none +sbwtdcpu none +sbwtdio none}"
PR_PORT="${PROSODY_PORT:-25222}"

GEN="${BENCH_GEN_BIN:-$ROOT/target/release/waddle-bench}"
WADDLE="${WADDLE_BIN:-$ROOT/target/release/waddle}"
W_CONFIG="${BENCH_WADDLE_CONFIG:-config/waddle.toml}"

if [ "$QUICK" = 1 ]; then
    d_users=10 d_dur=5 d_rate=200 d_idle=100
    d_login_users=20
else
    d_users=50 d_dur=20 d_rate=2000 d_idle=2000
    d_login_users=200
fi
LOGIN_USERS="${LOGIN_USERS:-$d_login_users}"
LOGIN_DURATION="${LOGIN_DURATION:-$d_dur}"
CHAT_USERS="${CHAT_USERS:-$d_users}"
CHAT_DURATION="${CHAT_DURATION:-$d_dur}"
CHAT_WINDOW="${CHAT_WINDOW:-}"
OPEN_USERS="${OPEN_USERS:-$d_users}"
OPEN_RATE="${OPEN_RATE:-$d_rate}"
OPEN_DURATION="${OPEN_DURATION:-$d_dur}"
MUC_USERS="${MUC_USERS:-$d_users}"
MUC_DURATION="${MUC_DURATION:-$d_dur}"
MUC_RATE="${MUC_RATE:-}"
IDLE_USERS="${IDLE_USERS:-$d_idle}"
IDLE_DURATION="${IDLE_DURATION:-$d_dur}"

EJ_DIR="$WORK/ejabberd"
PR_DIR="$WORK/prosody"
W_DIR="$WORK/waddle"
TLS_DIR="$WORK/tls"
RESULTS="$WORK/results.jsonl"

log() { printf '[bench-ref %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------------------------ setup

install_packages() {
    if [ "$EJABBERD_DB" = sqlite ] && ! dpkg -s erlang-p1-sqlite3 >/dev/null 2>&1; then
        log "installing erlang-p1-sqlite3 (EJABBERD_DB=sqlite)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y --no-install-recommends erlang-p1-sqlite3 >"$WORK/apt-sqlite.log" 2>&1 \
            || { apt-get update >>"$WORK/apt-sqlite.log" 2>&1 || true
                 apt-get install -y --no-install-recommends erlang-p1-sqlite3 >>"$WORK/apt-sqlite.log" 2>&1; } \
            || die "apt-get install erlang-p1-sqlite3 failed, see $WORK/apt-sqlite.log"
    fi
    # Only what $SERVERS needs.
    local -a pkgs=()
    command -v openssl >/dev/null || pkgs+=(openssl)
    if [[ " $SERVERS " == *" ejabberd "* ]] && ! command -v ejabberdctl >/dev/null; then pkgs+=(ejabberd); fi
    if [[ " $SERVERS " == *" prosody "* ]] && ! { command -v prosody >/dev/null && command -v prosodyctl >/dev/null; }; then
        pkgs+=(prosody)
    fi
    [ "${#pkgs[@]}" -gt 0 ] || return 0
    log "installing ${pkgs[*]} from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${pkgs[@]}" >"$WORK/apt.log" 2>&1; then
        apt-get update >>"$WORK/apt.log" 2>&1 || true
        apt-get install -y --no-install-recommends "${pkgs[@]}" >>"$WORK/apt.log" 2>&1 \
            || die "apt-get install failed, see $WORK/apt.log"
    fi
}

# The packages' postinst may have started the system-wide servers (on 5222 with the /etc
# configs). Stop them; our own instances use their own configs, dirs and node name.
stop_debian_services() {
    local svc
    for svc in ejabberd prosody; do
        if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
            if systemctl is-active --quiet "$svc" 2>/dev/null; then
                log "stopping the Debian $svc service (systemd)"
                systemctl stop "$svc" || true
            fi
        elif [ -x "/etc/init.d/$svc" ]; then
            local running=0
            case $svc in
                ejabberd) pgrep -u ejabberd -f 'beam.*-sname ejabberd@' >/dev/null 2>&1 && running=1 ;;
                prosody) [ -s /run/prosody/prosody.pid ] && kill -0 "$(cat /run/prosody/prosody.pid)" 2>/dev/null \
                    && running=1 ;;
            esac
            if [ "$running" = 1 ]; then
                log "stopping the Debian $svc service (init.d)"
                timeout 90 "/etc/init.d/$svc" stop || true
            fi
        fi
    done
}

raise_fd_limit() {
    local hard want
    hard="$(ulimit -Hn)"
    want=65536
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then want="$hard"; fi
    ulimit -n "$want" 2>/dev/null || true
    local have need
    have="$(ulimit -n)"
    need=$((IDLE_USERS + 512))
    if [ "$have" != unlimited ] && [ "$have" -lt "$need" ]; then
        IDLE_USERS=$((have - 512))
        log "open files limit is $have: idle scenario reduced to $IDLE_USERS sessions"
    fi
    log "open files limit: $(ulimit -n)"
}

make_cert() {
    mkdir -p "$TLS_DIR"
    if [ ! -s "$TLS_DIR/cert.pem" ]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
            -subj "/CN=$DOMAIN" -addext "subjectAltName=DNS:$DOMAIN,DNS:$MUC_DOMAIN" \
            -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" >/dev/null 2>&1 \
            || die "openssl could not make the certificate"
        cat "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" >"$TLS_DIR/combined.pem"
    fi
    # A throwaway key for loopback benchmarks: readable by the servers' package users.
    chmod 755 "$TLS_DIR"
    chmod 644 "$TLS_DIR"/*.pem
}

# render TEMPLATE OUT MARK VARIANT: token substitution; keeps the lines ending in
# "MARK@mam-VARIANT" and drops those for the other variant; same for "MARK@db-..." and
# "MARK@sm-..." (after EJABBERD_DB and SM).
render() {
    local template="$1" out="$2" mark="$3" variant="$4" drop db_drop sm_drop
    if [ "$variant" = on ]; then drop=off; else drop=on; fi
    if [ "$EJABBERD_DB" = sqlite ]; then db_drop=mnesia; else db_drop=sqlite; fi
    if [ "$SM" = on ]; then sm_drop=off; else sm_drop=on; fi
    sed -e "/${mark}@mam-${drop}\$/d" \
        -e "/${mark}@db-${db_drop}\$/d" \
        -e "/${mark}@sm-${sm_drop}\$/d" \
        -e "s|@EJABBERD_DIR@|$EJ_DIR|g" \
        -e "s|@HOST@|$DOMAIN|g" \
        -e "s|@EJABBERD_PORT@|$EJ_PORT|g" \
        -e "s|@EJABBERD_HTTP_PORT@|$EJ_HTTP_PORT|g" \
        -e "s|@PROSODY_PORT@|$PR_PORT|g" \
        -e "s|@PROSODY_DIR@|$PR_DIR|g" \
        -e "s|@TLS_DIR@|$TLS_DIR|g" \
        -e "s|@TLS_COMBINED@|$TLS_DIR/combined.pem|g" \
        "$template" >"$out"
    if grep -q '@[A-Z_]*@' "$out"; then die "unreplaced token in $out"; fi
}

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# wait_for_port NAME PORT PID WHERE [LOG...]: waits up to 60 s for PORT to open; dies with
# the tail of the LOG files if PID (when given) exits first, or pointing at WHERE on timeout.
wait_for_port() {
    local name=$1 port=$2 pid=$3 where=$4 i
    shift 4
    for i in $(seq 1 120); do
        port_busy "$port" && return 0
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            die "$name exited: $(tail -5 "$@" 2>/dev/null)"
        fi
        sleep 0.5
    done
    die "$name did not open $HOST:$port within 60 s; see $where"
}

# stop_child NAME PID PIDFILE: TERM, up to 10 s to exit, then KILL; reaps it.
stop_child() {
    local name=$1 pid=$2 pidfile=$3 i
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

check_free() {
    local port
    for port in "$@"; do
        if port_busy "$port"; then die "port $port on $HOST is already in use"; fi
    done
}

# ---------------------------------------------------------------------- servers

WADDLE_PID=""
EJ_RUNNING=0
PROSODY_PID=""

# True when this waddle has the [archive] enabled switch (WADDLE_ARCHIVE_ENABLED); the
# config file must match the binary anyway (unknown sections are rejected at startup).
waddle_has_mam_switch() { (cd "$ROOT" && grep -q '^\[archive\]' "$W_CONFIG"); }

start_waddle() {
    local variant="$1"
    local -a mam_env=()
    if waddle_has_mam_switch; then
        if [ "$variant" = on ]; then mam_env=(WADDLE_ARCHIVE_ENABLED=true); else mam_env=(WADDLE_ARCHIVE_ENABLED=false); fi
    fi
    [ -x "$WADDLE" ] || die "no $WADDLE (BUILD=1 or cargo build --release -p waddle)"
    check_free "$W_PORT" "$W_TLS_PORT" "$W_HTTP_PORT"
    rm -rf "$W_DIR"
    mkdir -p "$W_DIR/data"
    log "starting waddle (${mam_env[*]:-no archive switch: always archives}) on $HOST:$W_PORT"
    (
        cd "$ROOT"
        exec env -u RUST_LOG \
            WADDLE_SERVER_DOMAIN="$DOMAIN" \
            WADDLE_SERVER_DATA_DIR="$W_DIR/data" \
            WADDLE_SERVER_BIND_ADDRESS="$HOST" \
            WADDLE_C2S_STARTTLS_PORT="$W_PORT" \
            WADDLE_C2S_DIRECT_TLS_PORT="$W_TLS_PORT" \
            WADDLE_C2S_MAX_STANZA_BYTES=262144 \
            WADDLE_HTTP_PORT="$W_HTTP_PORT" \
            WADDLE_TLS_CERT_PATH="$TLS_DIR/cert.pem" \
            WADDLE_TLS_KEY_PATH="$TLS_DIR/key.pem" \
            WADDLE_RATE_LIMITS_ENABLED=false \
            WADDLE_AUTH_SCRAM_ITERATIONS=4096 \
            WADDLE_AUTH_OPEN_REGISTRATION=true \
            WADDLE_AUTH_IN_BAND_REGISTRATION=true \
            WADDLE_AUTH_MAX_REGISTRATIONS_PER_ADDRESS=1000000 \
            WADDLE_LOG_LEVEL=warn \
            "${mam_env[@]}" \
            "$WADDLE" --config "$W_CONFIG"
    ) >"$W_DIR/waddle.log" 2>&1 &
    WADDLE_PID=$!
    echo "$WADDLE_PID" >"$WORK/waddle.pid"
    wait_for_port waddle "$W_PORT" "$WADDLE_PID" "$W_DIR/waddle.log" "$W_DIR/waddle.log"
    log "waddle pid $WADDLE_PID"
}

stop_waddle() {
    stop_child waddle "$WADDLE_PID" "$WORK/waddle.pid"
    WADDLE_PID=""
}

# ejabberdctl su's to the ejabberd user when called by root, and su's pam_limits resets
# the open-files limit to init's (1024 here); setpriv switches user without PAM, so the
# node inherits this script's raised limit. The cookie is ~ejabberd/.erlang.cookie.
ejctl() {
    setpriv --reuid ejabberd --regid ejabberd --init-groups env HOME=/var/lib/ejabberd \
        ejabberdctl --config-dir "$EJ_DIR/etc" --ctl-config "$EJ_DIR/etc/ejabberdctl.cfg" \
        --config "$EJ_DIR/etc/ejabberd.yml" --spool "$EJ_DIR/spool" --logs "$EJ_DIR/log" \
        --node "$EJ_NODE" "$@"
}

ejabberd_pid() {
    pgrep -u ejabberd -f "beam.smp.*-sname ${EJ_NODE}( |\$)" | head -1
}

start_ejabberd() {
    local variant="$1"
    check_free "$EJ_PORT" "$EJ_HTTP_PORT"
    if [ -n "$(ejabberd_pid)" ]; then die "an ejabberd node named $EJ_NODE is already running"; fi
    rm -rf "$EJ_DIR"
    mkdir -p "$EJ_DIR/etc" "$EJ_DIR/spool" "$EJ_DIR/log"
    render "$REF/ejabberd.yml.in" "$EJ_DIR/etc/ejabberd.yml" '#' "$variant"
    [ -f /etc/ejabberd/inetrc ] && cp /etc/ejabberd/inetrc "$EJ_DIR/etc/inetrc"
    cat >"$EJ_DIR/etc/ejabberdctl.cfg" <<EOF
# Written by scripts/bench-reference.sh
ERLANG_NODE=$EJ_NODE
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 $EJ_ERL_OPTIONS"
ERL_MAX_PORTS=65536
EJABBERD_BYPASS_WARNINGS=true
EOF
    chown -R ejabberd:ejabberd "$EJ_DIR"
    log "starting ejabberd (node $EJ_NODE, MAM=$variant, db $EJABBERD_DB, SM=$SM) on $HOST:$EJ_PORT"
    ejctl start >"$EJ_DIR/log/start.out" 2>&1 || die "ejabberdctl start failed: $(cat "$EJ_DIR/log/start.out")"
    EJ_RUNNING=1
    wait_for_port ejabberd "$EJ_PORT" "" "$EJ_DIR/log/"
    timeout 90 bash -c "$(declare -f ejctl); EJ_DIR='$EJ_DIR' EJ_NODE='$EJ_NODE'; ejctl started" \
        >/dev/null 2>&1 || die "ejabberd did not report started; see $EJ_DIR/log/"
    local pid
    pid="$(ejabberd_pid)"
    [ -n "$pid" ] || die "cannot find the beam.smp process of $EJ_NODE"
    echo "$pid" >"$WORK/ejabberd.pid"
    log "ejabberd beam.smp pid $pid"
}

stop_ejabberd() {
    [ "$EJ_RUNNING" = 1 ] || return 0
    local pid
    pid="$(ejabberd_pid || true)"
    log "stopping ejabberd (node $EJ_NODE${pid:+, pid $pid})"
    timeout 60 bash -c "$(declare -f ejctl); EJ_DIR='$EJ_DIR' EJ_NODE='$EJ_NODE'; ejctl stop; ejctl stopped" \
        >/dev/null 2>&1 || true
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        sleep 2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    EJ_RUNNING=0
    rm -f "$WORK/ejabberd.pid"
}

start_prosody() {
    local variant="$1"
    check_free "$PR_PORT"
    rm -rf "$PR_DIR"
    mkdir -p "$PR_DIR/data"
    render "$REF/prosody.cfg.lua.in" "$PR_DIR/prosody.cfg.lua" '--' "$variant"
    chown -R prosody:prosody "$PR_DIR"
    prosodyctl --config "$PR_DIR/prosody.cfg.lua" check config >"$PR_DIR/check.out" 2>&1 \
        || die "prosodyctl check config failed: $(cat "$PR_DIR/check.out")"
    log "starting prosody (MAM=$variant) on $HOST:$PR_PORT"
    # Prosody refuses to run as root; setpriv execs it as the package user in place, so
    # $! is the Lua process itself.
    setpriv --reuid prosody --regid prosody --init-groups \
        prosody --config "$PR_DIR/prosody.cfg.lua" -F >"$PR_DIR/stdout.log" 2>&1 &
    PROSODY_PID=$!
    wait_for_port prosody "$PR_PORT" "$PROSODY_PID" "$PR_DIR/" "$PR_DIR/stdout.log" "$PR_DIR/prosody.log"
    if [ -s "$PR_DIR/prosody.pid" ]; then PROSODY_PID="$(cat "$PR_DIR/prosody.pid")"; fi
    echo "$PROSODY_PID" >"$WORK/prosody.pid"
    log "prosody pid $PROSODY_PID"
}

stop_prosody() {
    stop_child prosody "$PROSODY_PID" "$WORK/prosody.pid"
    PROSODY_PID=""
}

stop_all() {
    stop_waddle || true
    stop_ejabberd || true
    stop_prosody || true
}

server_port() {
    case $1 in waddle) echo "$W_PORT" ;; ejabberd) echo "$EJ_PORT" ;; prosody) echo "$PR_PORT" ;; esac
}

server_pid() {
    case $1 in
        waddle) echo "$WADDLE_PID" ;;
        ejabberd) ejabberd_pid ;;
        prosody) echo "$PROSODY_PID" ;;
    esac
}

server_auth() {
    local var="AUTH_${1^^}"
    echo "${!var:-$AUTH}"
}

start_server() { # NAME MAM-VARIANT
    case $1 in
        waddle) start_waddle "$2" ;;
        ejabberd) start_ejabberd "$2" ;;
        prosody) start_prosody "$2" ;;
        *) die "unknown server $1" ;;
    esac
}

stop_server() {
    case $1 in waddle) stop_waddle ;; ejabberd) stop_ejabberd ;; prosody) stop_prosody ;; esac
}

# ------------------------------------------------------------------ provisioning

provision_fallback() { # NAME USERS
    local name="$1" users="$2"
    log "provisioning $name with the fallback (PROVISION=$PROVISION)"
    case $name in
        waddle)
            python3 "$REF/refbench.py" http-register --kind waddle --url "http://$HOST:$W_HTTP_PORT" \
                --users "$users" --user-prefix "$PREFIX" --password "$PASSWORD"
            ;;
        ejabberd)
            # mod_http_api does thousands per second; ejabberdctl starts an Erlang node per
            # account (about a second each), so it is the last resort.
            if [ "$PROVISION" = ctl ] || ! python3 "$REF/refbench.py" http-register --kind ejabberd --url "http://$HOST:$EJ_HTTP_PORT" \
                --domain "$DOMAIN" --users "$users" --user-prefix "$PREFIX" --password "$PASSWORD"; then
                log "registering with ejabberdctl (about 0.3 s per account, 4 in parallel)"
                local i
                for ((i = 0; i < users; i++)); do echo "$PREFIX$i"; done \
                    | xargs -P 4 -I{} timeout 30 bash -c "$(declare -f ejctl); EJ_DIR='$EJ_DIR' \
                        EJ_NODE='$EJ_NODE'; ejctl register {} '$DOMAIN' '$PASSWORD'" >/dev/null 2>&1 || true
            fi
            log "ejabberd now has $(timeout 60 bash -c "$(declare -f ejctl); EJ_DIR='$EJ_DIR' \
                EJ_NODE='$EJ_NODE'; ejctl registered_users '$DOMAIN'" 2>/dev/null | wc -l) accounts"
            ;;
        prosody)
            local i
            for ((i = 0; i < users; i++)); do echo "$PREFIX$i"; done \
                | xargs -P 4 -I{} timeout 30 prosodyctl --config "$PR_DIR/prosody.cfg.lua" \
                    register {} "$DOMAIN" "$PASSWORD" >/dev/null 2>&1 || true
            log "prosody now has $(find "$PR_DIR/data/localhost/accounts" -name '*.dat' 2>/dev/null | wc -l) accounts"
            ;;
    esac
}

provision() { # NAME USERS
    local name="$1" users="$2" port
    port="$(server_port "$name")"
    log "provisioning $users users on $name"
    local out="$WORK/runs/$name-register.out"
    rm -f "$out"
    if [ "$PROVISION" = ibr ] && [ -x "$GEN" ] && timeout $((120 + users / 10)) "$GEN" register --host "$HOST" --port "$port" \
        --domain "$DOMAIN" --users "$users" --user-prefix "$PREFIX" --password "$PASSWORD" \
        --tls "$TLS_MODE" >"$out" 2>&1 \
        && python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(0 if not r.get("errors") and r.get("delivered")==int(sys.argv[2]) else 1)' \
            "$(grep '^{' "$out" | tail -1)" "$users" 2>/dev/null; then
        log "in-band registration done: $(grep -h '^note' "$out" | head -1)"
    else
        if [ "$PROVISION" = ibr ]; then
            log "in-band registration failed or unavailable ($(tail -1 "$out" 2>/dev/null)); using the fallback"
        fi
        provision_fallback "$name" "$users"
    fi
}

preflight() { # NAME
    local name="$1" mech
    mech="$(server_auth "$name")"
    python3 "$REF/refbench.py" preflight --label "$name" --host "$HOST" --port "$(server_port "$name")" \
        --domain "$DOMAIN" --muc-domain "$MUC_DOMAIN" --password "$PASSWORD" --mechanism "${mech^^}"
}

# --------------------------------------------------------------------- scenarios

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# Waits (at most SETTLE_MAX seconds) until PID uses under 5 % of a core over one second,
# so work left over from the previous scenario (archive writes still being flushed, a
# BEAM's schedulers spinning down) is not billed to the next one.
settle() {
    local pid="$1" i a b hz
    hz="$(getconf CLK_TCK)"
    [ -n "$pid" ] || return 0
    for ((i = 0; i < SETTLE_MAX; i++)); do
        a="$(cpu_ticks "$pid")"
        sleep 1
        b="$(cpu_ticks "$pid")"
        if [ $(((b - a) * 100)) -le $((hz * 5)) ]; then
            if [ "$i" -gt 0 ]; then log "server settled after ${i}s"; fi
            return 0
        fi
    done
    log "server still busy after ${SETTLE_MAX}s; running the next scenario anyway"
}

run_scenario() { # SERVER MAM SCENARIO
    local server="$1" mam="$2" scenario="$3" port pid auth duration
    port="$(server_port "$server")"
    pid="$(server_pid "$server")"
    auth="$(server_auth "$server")"
    local -a args=(--host "$HOST" --port "$port" --domain "$DOMAIN" --muc-domain "$MUC_DOMAIN"
        --user-prefix "$PREFIX" --password "$PASSWORD" --tls "$TLS_MODE" --auth "$auth"
        --label "$server" --server-pid "$pid")
    local sub
    case $scenario in
        login) sub=login duration="$LOGIN_DURATION"; args+=(--users "$LOGIN_USERS") ;;
        chat-closed)
            sub=chat duration="$CHAT_DURATION"; args+=(--users "$CHAT_USERS")
            if [ -n "$CHAT_WINDOW" ]; then args+=(--window "$CHAT_WINDOW"); fi
            ;;
        chat-open) sub=chat duration="$OPEN_DURATION"; args+=(--users "$OPEN_USERS" --rate "$OPEN_RATE") ;;
        muc)
            sub=muc duration="$MUC_DURATION"; args+=(--users "$MUC_USERS" --room "bench-$server-mam$mam")
            if [ -n "$MUC_RATE" ]; then args+=(--rate "$MUC_RATE"); fi
            ;;
        idle) sub=idle duration="$IDLE_DURATION"; args+=(--users "$IDLE_USERS") ;;
        *) die "unknown scenario $scenario" ;;
    esac
    args+=(--duration "$duration")
    if [ "$SM" = on ]; then args+=(--sm); fi
    local out="$WORK/runs/$server-mam$mam-$scenario.out"
    settle "$pid"
    log "$server (MAM=$mam): $scenario: waddle-bench $sub ${args[*]}"
    local rc=0
    timeout --kill-after=10 $((duration + RUN_SLACK)) "$GEN" "$sub" "${args[@]}" >"$out" 2>"$out.err" || rc=$?
    sed -n '/^{/!p' "$out" >&2
    if [ "$rc" != 0 ]; then
        log "$server $scenario: waddle-bench exited $rc; stderr tail:"
        tail -5 "$out.err" >&2 || true
    fi
    local -a extra=()
    if [ "$server" = waddle ]; then
        if waddle_has_mam_switch; then extra=(waddle_mam_switch=yes); else extra=(waddle_mam_switch=no); fi
    fi
    if [ "$server" = ejabberd ]; then extra=(ejabberd_db="$EJABBERD_DB" ejabberd_erl_options="$EJ_ERL_OPTIONS"); fi
    extra+=(ref_sm="$SM")
    if python3 "$REF/refbench.py" tag server="$server" mam="$mam" ref_scenario="$scenario" \
        auth="$auth" tls="$TLS_MODE" exit_code="$rc" "${extra[@]}" <"$out" >>"$RESULTS"; then
        :
    else
        log "$server $scenario: no JSON result"
    fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then die "$server (pid $pid) died during $scenario"; fi
}

max_users() {
    local m=0 n s
    for s in $SCENARIOS; do
        case $s in
            login) n=$LOGIN_USERS ;; chat-closed) n=$CHAT_USERS ;; chat-open) n=$OPEN_USERS ;;
            muc) n=$MUC_USERS ;; idle) n=$IDLE_USERS ;; *) n=0 ;;
        esac
        if [ "$n" -gt "$m" ]; then m=$n; fi
    done
    echo "$m"
}

mam_variants() {
    case $MAM in
        on) echo on ;; off) echo off ;; both) echo "on off" ;;
        *) die "MAM must be on, off or both" ;;
    esac
}

# -------------------------------------------------------------------------- main

prepare() {
    mkdir -p "$WORK" "$WORK/runs"
    chmod 755 "$WORK"
    install_packages
    stop_debian_services
    raise_fd_limit
    make_cert
}

build() {
    if [ "$BUILD" = 1 ]; then
        log "cargo build --release -p waddle-bench -p waddle"
        (cd "$ROOT" && cargo build --release -p waddle-bench -p waddle) || die "build failed"
    fi
    [ -x "$GEN" ] || die "no load generator at $GEN"
}

# Cleanup ignores further signals, so a second Ctrl-C (or `timeout` signalling the whole
# process group) cannot cut it short and leave a server behind.
cleanup() {
    trap '' INT TERM
    stop_all
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The whole run lives in a function so bash has parsed all of it before it starts:
# editing this file during a run cannot change what the run does.
main() {
    case $CMD in
        run)
            prepare
            build
            users="$(max_users)"
            if [ -s "$RESULTS" ]; then mv "$RESULTS" "$RESULTS.prev"; fi
            : >"$RESULTS"
            rm -f "$WORK"/runs/*
            for mam in $(mam_variants); do
                for server in $SERVERS; do
                    # A waddle without the archive switch always archives: run it once and
                    # copy its results to the other variant's table.
                    if [ "$server" = waddle ] && ! waddle_has_mam_switch \
                        && [ "$mam" != "$(mam_variants | cut -d' ' -f1)" ]; then
                        python3 "$REF/refbench.py" copy-waddle "$RESULTS" "$mam"
                        continue
                    fi
                    start_server "$server" "$mam"
                    preflight "$server" >&2 || log "$server: preflight check failed (see above); running anyway"
                    provision "$server" "$users"
                    for scenario in $SCENARIOS; do
                        run_scenario "$server" "$mam" "$scenario"
                    done
                    stop_server "$server"
                done
            done
            log "results: $RESULTS"
            python3 "$REF/refbench.py" compare "$RESULTS"
            ;;
        start | preflight)
            prepare
            variant="$(mam_variants | cut -d' ' -f1)"
            if [ "$BUILD" = 1 ] && [ ! -x "$WADDLE" ]; then (cd "$ROOT" && cargo build --release -p waddle); fi
            for server in $SERVERS; do start_server "$server" "$variant"; done
            rc=0
            for server in $SERVERS; do preflight "$server" || rc=1; done
            if [ "$CMD" = preflight ]; then exit "$rc"; fi
            for server in $SERVERS; do provision "$server" "$(max_users)"; done
            for server in $SERVERS; do
                log "$server: $HOST:$(server_port "$server") pid $(server_pid "$server")"
            done
            log "holding for $HOLD_SECS s (Ctrl-C stops the servers)"
            sleep "$HOLD_SECS" &
            wait $! || true
            ;;
        compare)
            python3 "$REF/refbench.py" compare "$RESULTS"
            ;;
        *)
            die "usage: $0 [run|start|preflight|compare]"
            ;;
    esac
}

main "$@"
exit
