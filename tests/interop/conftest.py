"""Fixtures for the waddle black-box interop suite.

One ``waddle`` process is started per test session (``server``), plus one
per module that uses ``ping_server`` (fast XEP-0199 keepalive). Both come
from the same factory (``_waddle_server``): configured only through
``WADDLE_*`` environment overrides on top of ``config/waddle.toml``,
listening on free loopback ports with a fresh data directory. Tests talk to
them with slixmpp, raw sockets and http.client.

Environment knobs:
  WADDLE_BIN            server binary (default: <repo>/target/debug/waddle)
  WADDLE_CONFIG         config file passed to --config (default: config/waddle.toml,
                        relative to the repo root, which is the server's cwd)
  INTEROP_TIMEOUT       per-wait timeout in seconds (default 10)
  INTEROP_QUIET_PERIOD  how long "must not arrive" checks watch (default 1.0)
  INTEROP_KEEP_TMP=1    keep the temp dir (data + server log) even on success

Inherited WADDLE_* variables are NOT passed to the server (it rejects unknown
ones, and a developer's shell must not change what the suite tests).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator, Optional

import pytest

from xmpp_helpers import (
    DOMAIN,
    PING_INTERVAL_SECS,
    PING_TIMEOUT_SECS,
    TIMEOUT,
    RawStream,
    ServerInfo,
    XmppClient,
    connect_client,
    http_request,
    unique,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 30.0
SHUTDOWN_GRACE = 10.0

# "servers": fixture name -> ServerInfo of the servers currently running;
# "started": every server started in this run (for the final summary).
_state: dict = {"servers": {}, "started": [], "failed": False}

# The server of the keepalive tests (see xmpp_helpers.PING_INTERVAL_SECS).
PING_SERVER_ENV = {
    "WADDLE_C2S_PING_INTERVAL_SECS": str(PING_INTERVAL_SECS),
    "WADDLE_C2S_PING_TIMEOUT_SECS": str(PING_TIMEOUT_SECS),
}


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback TCP ports (bound then released)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            port = s.getsockname()[1]
            if port not in ports:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def _die_with_parent() -> None:
    """preexec hook: have Linux SIGTERM the server if pytest dies abruptly."""
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _resolve_binary() -> Path:
    raw = os.environ.get("WADDLE_BIN", "target/debug/waddle")
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def _health_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _log_excerpt(info: ServerInfo) -> str:
    return f"server log: {info.log_path}\n--- last lines ---\n{info.log_tail()}"


def _waddle_server(name: str, extra_env: Optional[dict] = None) -> Iterator[ServerInfo]:
    """Start ``waddle`` as a real process, yield its ServerInfo, stop it.

    The body of every server fixture: ``name`` is the fixture's name (used
    in reports and by the liveness check), ``extra_env`` holds ``WADDLE_*``
    overrides on top of the suite's defaults.
    """
    binary = _resolve_binary()
    if not binary.is_file():
        pytest.fail(
            f"waddle binary not found at {binary}; build it (cargo build) or set WADDLE_BIN",
            pytrace=False)

    tmp_root = Path(tempfile.mkdtemp(prefix=f"waddle-interop-{name}-"))
    data_dir = tmp_root / "data"
    data_dir.mkdir()
    log_path = tmp_root / "server.log"
    p1, p2, p3 = _free_ports(3)
    info = ServerInfo(starttls_port=p1, direct_tls_port=p2, http_port=p3,
                      log_path=str(log_path), data_dir=str(data_dir), name=name)

    env = {k: v for k, v in os.environ.items() if not k.startswith("WADDLE_")}
    env.update({
        "WADDLE_SERVER_DOMAIN": DOMAIN,
        "WADDLE_SERVER_DATA_DIR": str(data_dir),
        "WADDLE_SERVER_BIND_ADDRESS": "127.0.0.1",
        "WADDLE_C2S_STARTTLS_PORT": str(p1),
        "WADDLE_C2S_DIRECT_TLS_PORT": str(p2),
        "WADDLE_HTTP_PORT": str(p3),
        "WADDLE_AUTH_OPEN_REGISTRATION": "true",
        "WADDLE_AUTH_IN_BAND_REGISTRATION": "true",
        "WADDLE_C2S_MAX_STANZA_BYTES": "65536",
        "WADDLE_AUTH_SCRAM_ITERATIONS": "4096",
        "WADDLE_AUTH_MAX_AUTH_FAILURES": "5",
        "RUST_LOG": "info",
        "RUST_BACKTRACE": "1",
    })
    env.update(extra_env or {})
    config = os.environ.get("WADDLE_CONFIG", "config/waddle.toml")
    cmd = [str(binary), "--config", config]

    log_fh = open(log_path, "wb")
    overrides = " ".join(f"{k}={v}" for k, v in sorted((extra_env or {}).items()))
    log_fh.write(f"# cmd: {cmd}\n# ports: starttls={p1} direct_tls={p2} http={p3}\n"
                 f"# data dir: {data_dir}\n# extra env: {overrides or '-'}\n".encode())
    log_fh.flush()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                            stdout=log_fh, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_die_with_parent)
    info.proc = proc
    _state["servers"][name] = info
    _state["started"].append(info)
    print(f"\n[interop] {name}: waddle pid={proc.pid} log={log_path}")

    health = f"{info.http_base}/health"
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if proc.poll() is not None:
            log_fh.close()
            _state["servers"].pop(name, None)
            pytest.fail(f"{name}: waddle exited during startup with code {proc.returncode}\n"
                        f"{_log_excerpt(info)}", pytrace=False)
        if _health_ok(health):
            break
        if time.monotonic() > deadline:
            _stop(proc)
            log_fh.close()
            _state["servers"].pop(name, None)
            pytest.fail(f"{name}: GET {health} did not return 200 within {STARTUP_TIMEOUT}s\n"
                        f"{_log_excerpt(info)}", pytrace=False)
        time.sleep(0.1)

    crashed_before_teardown = None
    try:
        yield info
    finally:
        _state["servers"].pop(name, None)
        if proc.poll() is not None:
            crashed_before_teardown = proc.returncode
        code, killed = _stop(proc)
        log_fh.close()
        keep = _state["failed"] or os.environ.get("INTEROP_KEEP_TMP") == "1"
        problem = None
        if crashed_before_teardown is not None:
            problem = f"{name}: waddle died during the session (exit code {crashed_before_teardown})"
        elif killed:
            # Hanging on SIGTERM is a bug but not a crash: report, don't fail.
            print(f"\n[interop] WARNING: {name}: waddle ignored SIGTERM for {SHUTDOWN_GRACE}s "
                  f"and was killed; log: {log_path}")
            keep = True
        elif code not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
            problem = f"{name}: waddle exited with code {code} after SIGTERM"
        if problem:
            keep = True
            pytest.fail(f"{problem}\n{_log_excerpt(info)}", pytrace=False)
        if keep:
            print(f"\n[interop] kept {name} data/log in {tmp_root}")
        else:
            shutil.rmtree(tmp_root, ignore_errors=True)


@pytest.fixture(scope="session")
def server() -> Iterator[ServerInfo]:
    """The server shared by the whole session (default keepalive settings:
    it never pings a client during the suite)."""
    yield from _waddle_server("server")


@pytest.fixture(scope="module")
def ping_server() -> Iterator[ServerInfo]:
    """A second server, per test module, with fast XEP-0199 keepalive:
    ping after PING_INTERVAL_SECS of client silence, give up
    PING_TIMEOUT_SECS after an unanswered ping."""
    yield from _waddle_server("ping_server", PING_SERVER_ENV)


def _stop(proc: subprocess.Popen) -> tuple[int, bool]:
    """SIGTERM, wait, then SIGKILL. Returns (exit code, had to kill)."""
    if proc.poll() is not None:
        return proc.returncode, False
    try:
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=SHUTDOWN_GRACE), False
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=SHUTDOWN_GRACE), True


@pytest.fixture(autouse=True)
def _server_still_alive(request):
    """After every test that used a server, make sure it did not crash."""
    yield
    for name, info in list(_state["servers"].items()):
        if name in request.fixturenames and not info.alive():
            pytest.fail(f"{name}: waddle is no longer running (exit code "
                        f"{info.proc.returncode})\n{_log_excerpt(info)}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        _state["failed"] = True
        for name, info in _state["servers"].items():
            if name in item.fixturenames:
                report.sections.append((f"waddle {name}", _log_excerpt(info)))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if exitstatus != 0 or _state["failed"]:
        for info in _state["started"]:
            terminalreporter.write_line(f"waddle {info.name} log: {info.log_path}")


# --------------------------------------------------------------------------
# helper fixtures
# --------------------------------------------------------------------------


def _http_caller(info: ServerInfo) -> Callable:
    def call(method: str, path: str, json=None, bearer=None, headers=None, source_ip=None):
        return http_request(info.http_base, method, path, json=json, bearer=bearer,
                            headers=headers, source_ip=source_ip)
    return call


def _account_maker(http: Callable) -> Callable:
    def create(prefix: str = "u"):
        username = unique(prefix)
        password = "Pw" + unique("")
        status, body = http("POST", "/v1/accounts",
                            json={"username": username, "password": password})
        assert status == 201, f"account creation failed: {status} {body!r}"
        assert isinstance(body, dict), f"non-JSON account response: {body!r}"
        assert body.get("username") == username, body
        assert body.get("jid") == f"{username}@{DOMAIN}", body
        return username, password
    return create


async def _xmpp_connector(info: ServerInfo) -> AsyncIterator[Callable]:
    clients: list[XmppClient] = []

    async def connect(username: str, password: str, resource: str | None = None, *,
                      direct_tls: bool = False, sasl_mech: str | None = None,
                      expect_session: bool = True, jid: str | None = None,
                      source_ip: str | None = None, timeout: float = TIMEOUT) -> XmppClient:
        full = jid or f"{username}@{DOMAIN}" + (f"/{resource}" if resource else "")
        client = XmppClient(full, password, sasl_mech=sasl_mech, source_ip=source_ip)
        clients.append(client)
        return await connect_client(info, full, password, direct_tls=direct_tls,
                                    expect_session=expect_session, timeout=timeout,
                                    client=client)

    connect.track = clients.append  # for clients built by hand
    yield connect
    for c in clients:
        await c.close(wait=0.5)


def _raw_opener(info: ServerInfo) -> Iterator[Callable]:
    opened: list[RawStream] = []

    def open_raw(source_ip: str | None = None) -> RawStream:
        rs = RawStream(info.host, info.starttls_port, source_ip=source_ip)
        opened.append(rs)
        return rs

    yield open_raw
    for rs in opened:
        rs.close()


@pytest.fixture
def http(server):
    """``http(method, path, json=None, bearer=None) -> (status, parsed json)``.

    Pass ``source_ip=fresh_source_ip()`` for requests that are expected to
    fail authentication (the server rate-limits failures per address)."""
    return _http_caller(server)


@pytest.fixture
def make_account(http):
    """``make_account(prefix='u') -> (username, password)`` via POST /v1/accounts."""
    return _account_maker(http)


@pytest.fixture
async def xmpp(server):
    """Async factory: ``await xmpp(username, password, resource=None,
    direct_tls=False, sasl_mech=None, expect_session=True, source_ip=None)``
    -> connected XmppClient (session started unless expect_session=False).
    Every client is disconnected at teardown. Logins expected to fail should
    pass ``source_ip=fresh_source_ip()``."""
    async for connect in _xmpp_connector(server):
        yield connect


@pytest.fixture
def raw(server):
    """Factory for RawStream connections to the STARTTLS port; all closed
    at teardown."""
    yield from _raw_opener(server)


# The same helpers bound to ``ping_server``.


@pytest.fixture
def ping_make_account(ping_server):
    return _account_maker(_http_caller(ping_server))


@pytest.fixture
async def ping_xmpp(ping_server):
    async for connect in _xmpp_connector(ping_server):
        yield connect


@pytest.fixture
def ping_raw(ping_server):
    yield from _raw_opener(ping_server)
