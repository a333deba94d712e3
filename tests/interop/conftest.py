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
    User,
    XmppClient,
    api_session,
    connect_client,
    http_request,
    insecure_ssl_context,
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
        context = insecure_ssl_context() if url.startswith("https:") else None
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _log_excerpt(info: ServerInfo) -> str:
    return f"server log: {info.log_path}\n--- last lines ---\n{info.log_tail()}"


class WaddleProcess:
    """One ``waddle`` server: a temp root (data dir + server.log), three free
    loopback ports, and the process, which can be stopped and started again
    on the same data dir and ports (``restart``).

    ``name`` is the fixture's name (used in reports and by the liveness
    check), ``extra_env`` holds ``WADDLE_*`` overrides on top of the suite's
    defaults.
    """

    def __init__(self, name: str, extra_env: Optional[dict] = None):
        self.binary = _resolve_binary()
        if not self.binary.is_file():
            pytest.fail(
                f"waddle binary not found at {self.binary}; build it (cargo build) or set WADDLE_BIN",
                pytrace=False)
        self.name = name
        self.extra_env = dict(extra_env or {})
        self.tmp_root = Path(tempfile.mkdtemp(prefix=f"waddle-interop-{name}-"))
        data_dir = self.tmp_root / "data"
        data_dir.mkdir()
        self.log_path = self.tmp_root / "server.log"
        p1, p2, p3 = _free_ports(3)
        self.info = ServerInfo(starttls_port=p1, direct_tls_port=p2, http_port=p3,
                               log_path=str(self.log_path), data_dir=str(data_dir), name=name,
                               http_tls=self.extra_env.get("WADDLE_HTTP_TLS") == "true")
        self.log_fh = None
        self.starts = 0

    def _env(self) -> dict:
        info = self.info
        env = {k: v for k, v in os.environ.items() if not k.startswith("WADDLE_")}
        env.update({
            "WADDLE_SERVER_DOMAIN": DOMAIN,
            "WADDLE_SERVER_DATA_DIR": info.data_dir,
            "WADDLE_SERVER_BIND_ADDRESS": "127.0.0.1",
            "WADDLE_C2S_STARTTLS_PORT": str(info.starttls_port),
            "WADDLE_C2S_DIRECT_TLS_PORT": str(info.direct_tls_port),
            "WADDLE_HTTP_PORT": str(info.http_port),
            "WADDLE_AUTH_OPEN_REGISTRATION": "true",
            "WADDLE_AUTH_IN_BAND_REGISTRATION": "true",
            "WADDLE_C2S_MAX_STANZA_BYTES": "65536",
            "WADDLE_AUTH_SCRAM_ITERATIONS": "4096",
            "WADDLE_AUTH_MAX_AUTH_FAILURES": "5",
            # The suite creates hundreds of accounts from 127.0.0.1 (test_hardening_auth
            # tests the per-address limit on a server of its own).
            "WADDLE_AUTH_MAX_REGISTRATIONS_PER_ADDRESS": "1000000",
            "RUST_LOG": "info",
            "RUST_BACKTRACE": "1",
        })
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        """Start the process and wait for ``GET /health`` → 200 (pytest.fail
        if it exits or does not get ready within STARTUP_TIMEOUT)."""
        info, name = self.info, self.name
        config = os.environ.get("WADDLE_CONFIG", "config/waddle.toml")
        cmd = [str(self.binary), "--config", config]
        self.log_fh = open(self.log_path, "ab")
        overrides = " ".join(f"{k}={v}" for k, v in sorted(self.extra_env.items()))
        self.log_fh.write(f"# start #{self.starts + 1} cmd: {cmd}\n"
                          f"# ports: starttls={info.starttls_port} direct_tls={info.direct_tls_port} "
                          f"http={info.http_port}\n"
                          f"# data dir: {info.data_dir}\n# extra env: {overrides or '-'}\n".encode())
        self.log_fh.flush()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=self._env(), stdin=subprocess.DEVNULL,
                                stdout=self.log_fh, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
        self.starts += 1
        info.proc = proc
        _state["servers"][name] = info
        if info not in _state["started"]:
            _state["started"].append(info)
        print(f"\n[interop] {name}: waddle pid={proc.pid} log={self.log_path}")

        health = f"{info.http_base}/health"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if proc.poll() is not None:
                self._close_log()
                _state["servers"].pop(name, None)
                pytest.fail(f"{name}: waddle exited during startup with code {proc.returncode}\n"
                            f"{_log_excerpt(info)}", pytrace=False)
            if _health_ok(health):
                return
            if time.monotonic() > deadline:
                _stop(proc)
                self._close_log()
                _state["servers"].pop(name, None)
                pytest.fail(f"{name}: GET {health} did not return 200 within {STARTUP_TIMEOUT}s\n"
                            f"{_log_excerpt(info)}", pytrace=False)
            time.sleep(0.1)

    def stop(self) -> tuple[int, bool]:
        """SIGTERM (SIGKILL after SHUTDOWN_GRACE). Returns (exit code, had to kill)."""
        _state["servers"].pop(self.name, None)
        code, killed = _stop(self.info.proc)
        self._close_log()
        return code, killed

    def restart(self) -> None:
        """Graceful stop, which must exit with code 0, then start again on the
        same data dir and ports."""
        code, killed = self.stop()
        assert not killed, f"{self.name}: waddle ignored SIGTERM for {SHUTDOWN_GRACE}s"
        assert code == 0, f"{self.name}: waddle exited with code {code} after SIGTERM\n" \
                          f"{_log_excerpt(self.info)}"
        self.start()

    def _close_log(self) -> None:
        if self.log_fh is not None:
            self.log_fh.close()
            self.log_fh = None

    def teardown(self) -> None:
        """Stop the process; fail if it crashed or exited badly; remove the
        temp root unless something failed (or INTEROP_KEEP_TMP=1)."""
        info, name, proc = self.info, self.name, self.info.proc
        _state["servers"].pop(name, None)
        crashed_before_teardown = None
        if proc.poll() is not None:
            crashed_before_teardown = proc.returncode
        code, killed = _stop(proc)
        self._close_log()
        keep = _state["failed"] or os.environ.get("INTEROP_KEEP_TMP") == "1"
        problem = None
        if crashed_before_teardown is not None:
            problem = f"{name}: waddle died during the session (exit code {crashed_before_teardown})"
        elif killed:
            # Hanging on SIGTERM is a bug but not a crash: report, don't fail.
            print(f"\n[interop] WARNING: {name}: waddle ignored SIGTERM for {SHUTDOWN_GRACE}s "
                  f"and was killed; log: {self.log_path}")
            keep = True
        elif code not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
            problem = f"{name}: waddle exited with code {code} after SIGTERM"
        if problem:
            keep = True
            pytest.fail(f"{problem}\n{_log_excerpt(info)}", pytrace=False)
        if keep:
            print(f"\n[interop] kept {name} data/log in {self.tmp_root}")
        else:
            shutil.rmtree(self.tmp_root, ignore_errors=True)


def _waddle_server(name: str, extra_env: Optional[dict] = None) -> Iterator[ServerInfo]:
    """Start ``waddle`` as a real process, yield its ServerInfo, stop it.

    The body of every server fixture: ``name`` is the fixture's name (used
    in reports and by the liveness check), ``extra_env`` holds ``WADDLE_*``
    overrides on top of the suite's defaults.
    """
    server = WaddleProcess(name, extra_env)
    server.start()
    try:
        yield server.info
    finally:
        server.teardown()


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


@pytest.fixture(scope="module")
def wss_server() -> Iterator[ServerInfo]:
    """A server per test module whose HTTP listener speaks TLS (``http.tls``:
    https:// and wss://) and which does not treat plain WebSocket as secure."""
    yield from _waddle_server("wss_server", {"WADDLE_HTTP_TLS": "true",
                                             "WADDLE_HTTP_WEBSOCKET_SECURE": "false"})


@pytest.fixture(scope="module")
def plain_ws_server() -> Iterator[ServerInfo]:
    """A server per test module where plain ws:// is not declared secure
    (``http.websocket_secure = false``), so it obeys ``c2s.require_tls``."""
    yield from _waddle_server("plain_ws_server", {"WADDLE_HTTP_WEBSOCKET_SECURE": "false"})


@pytest.fixture
def restartable_server() -> Iterator[WaddleProcess]:
    """A server of the test's own (default settings) whose ``restart()``
    stops it with SIGTERM (exit code 0 required) and starts it again on the
    same data dir and ports. ``restartable_server.info`` is its ServerInfo;
    ``restart_http``, ``restart_make_account`` and ``restart_xmpp`` talk to it
    and keep working across restarts."""
    server = WaddleProcess("restartable_server")
    server.start()
    try:
        yield server
    finally:
        server.teardown()


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


def _user_maker(http: Callable, make_account: Callable) -> Callable:
    def create(prefix: str = "u") -> User:
        username, password = make_account(prefix)
        return User(username, password, api_session(http, username, password))
    return create


async def _xmpp_connector(info: ServerInfo) -> AsyncIterator[Callable]:
    clients: list[XmppClient] = []

    async def connect(username: str, password: str, resource: str | None = None, *,
                      direct_tls: bool = False, sasl_mech: str | None = None,
                      expect_session: bool = True, jid: str | None = None,
                      source_ip: str | None = None, timeout: float = TIMEOUT,
                      plugins: tuple[str, ...] = ()) -> XmppClient:
        full = jid or f"{username}@{DOMAIN}" + (f"/{resource}" if resource else "")
        client = XmppClient(full, password, sasl_mech=sasl_mech, source_ip=source_ip,
                            plugins=plugins)
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
    direct_tls=False, sasl_mech=None, expect_session=True, source_ip=None,
    plugins=())`` -> connected XmppClient (session started unless
    expect_session=False). ``plugins`` are extra slixmpp plugins, e.g.
    ``MUC_PLUGINS``. Every client is disconnected at teardown. Logins
    expected to fail should pass ``source_ip=fresh_source_ip()``."""
    async for connect in _xmpp_connector(server):
        yield connect


@pytest.fixture
def make_user(http, make_account):
    """``make_user(prefix='u') -> User`` (username, password, jid and an HTTP
    bearer session token from POST /auth/session)."""
    return _user_maker(http, make_account)


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


# The same helpers bound to ``restartable_server`` (they follow it across restarts).


@pytest.fixture
def restart_http(restartable_server):
    return _http_caller(restartable_server.info)


@pytest.fixture
def restart_make_user(restart_http):
    return _user_maker(restart_http, _account_maker(restart_http))


@pytest.fixture
async def restart_xmpp(restartable_server):
    async for connect in _xmpp_connector(restartable_server.info):
        yield connect
