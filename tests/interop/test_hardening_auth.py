"""Hardening of logins, registration and the HTTP listener:

- failed logins block the failing address, never the account's owner elsewhere
  (XMPP SCRAM and HTTP ``POST /auth/session``);
- in-band registration obeys ``auth.open_registration``; account creation is
  limited per client address across XEP-0077 and ``POST /v1/accounts``;
- local usernames of the DID-derived forms are refused;
- the HTTP listener closes idle and trickling connections and caps their
  number, while an upgraded XMPP-over-WebSocket session outlives both timeouts.
"""

from __future__ import annotations

import socket
import time
import xml.etree.ElementTree as ET
from typing import Iterator

import pytest

from conftest import _waddle_server
from test_websocket import login as ws_login
from test_websocket import recv, ws_connect
from xmpp_helpers import (
    DOMAIN,
    NS_REGISTER,
    RawStream,
    ServerInfo,
    fresh_source_ip,
    http_request,
    q,
    unique,
)

NS_CLIENT = "jabber:client"
NS_STANZAS_ERR = "urn:ietf:params:xml:ns:xmpp-stanzas"
REGISTER_FEATURE = "{http://jabber.org/features/iq-register}register"
ADMIN = "hardening-admin-token"

# Small HTTP limits for the listener tests: an idle connection goes after
# IDLE s, a trickling request head after HEADER s (IDLE < HEADER so the two
# are told apart), and at most MAX_CONNECTIONS at once.
IDLE, HEADER, MAX_CONNECTIONS = 1, 3, 6
REGISTRATIONS = 2


@pytest.fixture(scope="module")
def closed_server() -> Iterator[ServerInfo]:
    """Registration closed (in-band registration switched on, which must not
    matter), admin token set."""
    yield from _waddle_server("closed_server", {
        "WADDLE_AUTH_OPEN_REGISTRATION": "false",
        "WADDLE_AUTH_IN_BAND_REGISTRATION": "true",
        "WADDLE_AUTH_ADMIN_TOKEN": ADMIN,
    })


@pytest.fixture(scope="module")
def limited_server() -> Iterator[ServerInfo]:
    """Open registration, REGISTRATIONS accounts per address and hour."""
    yield from _waddle_server("limited_server", {
        "WADDLE_AUTH_MAX_REGISTRATIONS_PER_ADDRESS": str(REGISTRATIONS),
        "WADDLE_AUTH_ADMIN_TOKEN": ADMIN,
    })


@pytest.fixture(scope="module")
def timeouts_server() -> Iterator[ServerInfo]:
    # XMPP pings only every 60 s, so a WebSocket session stays silent for longer
    # than both HTTP timeouts.
    yield from _waddle_server("timeouts_server", {
        "WADDLE_HTTP_IDLE_TIMEOUT_SECS": str(IDLE),
        "WADDLE_HTTP_HEADER_TIMEOUT_SECS": str(HEADER),
        "WADDLE_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "WADDLE_C2S_PING_INTERVAL_SECS": "60",
    })


def create_account(info: ServerInfo, username: str, password: str, source_ip: str | None = None,
                   bearer: str | None = None) -> tuple[int, object]:
    return http_request(info.http_base, "POST", "/v1/accounts",
                        json={"username": username, "password": password},
                        source_ip=source_ip, bearer=bearer)


def session(info: ServerInfo, username: str, password: str, source_ip: str) -> int:
    status, _ = http_request(info.http_base, "POST", "/auth/session",
                             json={"username": username, "password": password},
                             source_ip=source_ip)
    return status


# ---------------------------------------------------------------------------
# login lockout
# ---------------------------------------------------------------------------


async def test_xmpp_failures_from_one_address_do_not_lock_out_another(xmpp, make_account, server):
    user, pw = make_account("lockx")
    attacker, owner = fresh_source_ip(), fresh_source_ip()
    # The suite's auth.max_auth_failures is 5.
    for i in range(5):
        bad = await xmpp(user, f"wrong{i}", "r", sasl_mech="SCRAM-SHA-256",
                         expect_session=False, source_ip=attacker)
        assert not bad.session_started.is_set(), "logged in with a wrong password"
        assert bad.auth_failures and bad.auth_failures[0] == "not-authorized", bad.auth_failures
    # The failing address is blocked now, even with the right password ...
    blocked = await xmpp(user, pw, "r", sasl_mech="SCRAM-SHA-256", expect_session=False,
                         source_ip=attacker)
    assert not blocked.session_started.is_set(), "a blocked address logged in"
    # ... over HTTP as well ...
    assert session(server, user, pw, attacker) == 429
    # ... while the owner, from an address that has not failed, gets in at once,
    # with SCRAM (where the server learns the password was right only at the end) ...
    started = time.monotonic()
    good = await xmpp(user, pw, "owner", sasl_mech="SCRAM-SHA-256", source_ip=owner)
    assert good.boundjid.full == f"{user}@{DOMAIN}/owner"
    assert time.monotonic() - started < 5
    # ... and with PLAIN.
    plain = await xmpp(user, pw, "plain", sasl_mech="PLAIN", source_ip=fresh_source_ip())
    assert plain.boundjid.full == f"{user}@{DOMAIN}/plain"


async def test_http_failures_from_one_address_do_not_lock_out_another(xmpp, make_account, server):
    user, pw = make_account("lockh")
    attacker, owner = fresh_source_ip(), fresh_source_ip()
    for _ in range(5):
        assert session(server, user, "wrong password", attacker) == 401
    assert session(server, user, pw, attacker) == 429
    assert session(server, user, pw, owner) == 200
    # The XMPP side shares the limiter: the attacker is blocked there too, the
    # owner is not.
    blocked = await xmpp(user, pw, "r", sasl_mech="PLAIN", expect_session=False,
                         source_ip=attacker)
    assert not blocked.session_started.is_set(), "a blocked address logged in over XMPP"
    good = await xmpp(user, pw, "r", sasl_mech="SCRAM-SHA-1", source_ip=fresh_source_ip())
    assert good.boundjid.bare == f"{user}@{DOMAIN}"


# ---------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------


def register_raw(rs: RawStream, username: str, password: str, iq_id: str) -> ET.Element:
    rs.send(f"<iq type='set' id='{iq_id}'><query xmlns='{NS_REGISTER}'>"
            f"<username>{username}</username><password>{password}</password></query></iq>")
    return rs.read_until(lambda e: e.get("id") == iq_id)


def stanza_error(reply: ET.Element) -> str | None:
    err = reply.find(q(NS_CLIENT, "error"))
    if err is None:
        return None
    return next((c.tag.split("}")[1] for c in err if c.tag.startswith("{" + NS_STANZAS_ERR)
                 and not c.tag.endswith("}text")), None)


def test_inband_registration_is_closed_with_registration(closed_server):
    rs = RawStream(closed_server.host, closed_server.starttls_port)
    try:
        rs.open_stream()
        features = rs.starttls()
        assert features.find(REGISTER_FEATURE) is None, \
            f"registration offered on a closed node: {ET.tostring(features)!r}"
        user = unique("ibrclosed")
        rs.send(f"<iq type='set' id='c1'><query xmlns='{NS_REGISTER}'>"
                f"<username>{user}</username><password>Pw{unique('')}</password></query></iq>")
        # Refused: a stanza error or the stream closed, never a result.
        try:
            reply = rs.read_element()
        except Exception:  # StreamClosed / OSError: refused by closing
            reply = None
        if reply is not None:
            assert reply.get("type") != "result", f"registered on a closed node: {ET.tostring(reply)!r}"
    finally:
        rs.close()
    status, body = create_account(closed_server, user, "Pw" + unique(""))
    assert status == 403, body
    # The account really does not exist: the admin can still create it.
    status, body = create_account(closed_server, user, "Pw" + unique(""), bearer=ADMIN)
    assert status == 201, body


def test_account_creation_is_limited_per_address(limited_server):
    source = fresh_source_ip()
    # One over HTTP, one in-band: the limit (2) is shared.
    status, body = create_account(limited_server, unique("lim"), "Pw" + unique(""), source_ip=source)
    assert status == 201, body
    rs = RawStream(limited_server.host, limited_server.starttls_port, source_ip=source)
    try:
        rs.open_stream()
        features = rs.starttls()
        assert features.find(REGISTER_FEATURE) is not None, ET.tostring(features)
        ok = register_raw(rs, unique("lim"), "Pw" + unique(""), "l1")
        assert ok.get("type") == "result", ET.tostring(ok)
        refused = register_raw(rs, unique("lim"), "Pw" + unique(""), "l2")
        assert refused.get("type") == "error", ET.tostring(refused)
        assert stanza_error(refused) == "resource-constraint", ET.tostring(refused)
    finally:
        rs.close()
    status, body = create_account(limited_server, unique("lim"), "Pw" + unique(""), source_ip=source)
    assert status == 429, body
    assert body["error"]["code"] == "rate_limited", body
    # Another address, and the admin token from this one, still create accounts.
    status, body = create_account(limited_server, unique("lim"), "Pw" + unique(""),
                                  source_ip=fresh_source_ip())
    assert status == 201, body
    status, body = create_account(limited_server, unique("lim"), "Pw" + unique(""),
                                  source_ip=source, bearer=ADMIN)
    assert status == 201, body


def test_did_derived_usernames_are_refused(raw, server):
    for name in ("web-a-b", "web-example-com", "ewvi7nxzyoun6zhxrhs64oiz"):
        status, body = http_request(server.http_base, "POST", "/v1/accounts",
                                    json={"username": name, "password": "Pw" + unique("")})
        assert status == 400 and body["error"]["code"] == "invalid_username", (name, status, body)
    rs = raw()
    rs.open_stream()
    rs.starttls()
    refused = register_raw(rs, "web-squatter-example", "Pw" + unique(""), "d1")
    assert refused.get("type") == "error", ET.tostring(refused)
    assert stanza_error(refused) == "not-acceptable", ET.tostring(refused)
    # A name that merely looks alike is fine.
    ok = register_raw(rs, unique("webmaster"), "Pw" + unique(""), "d2")
    assert ok.get("type") == "result", ET.tostring(ok)


# ---------------------------------------------------------------------------
# HTTP listener limits
# ---------------------------------------------------------------------------


def closed_after(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock`` (EOF or reset) and what it sent
    before; fails after ``limit`` seconds."""
    started = time.monotonic()
    received = b""
    sock.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            data = sock.recv(4096)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - started, received
        if data == b"":
            return time.monotonic() - started, received
        received += data
    raise AssertionError(f"connection still open after {limit} s")


def http_socket(info: ServerInfo) -> socket.socket:
    return socket.create_connection((info.host, info.http_port), timeout=5)


def test_idle_http_connection_is_closed(timeouts_server):
    with http_socket(timeouts_server) as sock:
        elapsed, _ = closed_after(sock, HEADER + 5)
    # The idle timeout, not the (longer) header timeout, closed it.
    assert IDLE * 0.8 <= elapsed < HEADER, elapsed


def test_idle_keep_alive_connection_is_closed(timeouts_server):
    with http_socket(timeouts_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200"), first
        elapsed, _ = closed_after(sock, HEADER + 5)
    assert elapsed < HEADER + 1, elapsed


def test_stalled_request_body_is_closed(timeouts_server):
    """The head is complete (so the header timeout is over) but the body stops
    half way: the idle timeout closes the connection, unanswered."""
    with http_socket(timeouts_server) as sock:
        sock.sendall(b"POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"username\":")
        elapsed, received = closed_after(sock, HEADER + 5)
    assert received == b"" or not received.startswith(b"HTTP/1.1 2"), received
    assert IDLE * 0.8 <= elapsed < HEADER, elapsed


def test_trickling_request_head_is_cut(timeouts_server):
    """A client that keeps sending a byte of its request head every 0.25 s is
    never idle, so only the header timeout stops it."""
    with http_socket(timeouts_server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        sock.settimeout(0.25)
        closed = False
        for _ in range(int((HEADER + 5) / 0.25)):
            try:
                sock.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            try:
                data = sock.recv(4096)
            except socket.timeout:
                continue
            except ConnectionResetError:
                closed = True
                break
            assert not data.startswith(b"HTTP/1.1 200"), data
            if data == b"" or b"408" in data:
                closed = True
                break
        elapsed = time.monotonic() - started
    assert closed, "trickling request still open"
    assert HEADER - 0.5 <= elapsed < HEADER + 2, elapsed


def test_connection_cap_closes_extra_connections(timeouts_server):
    held = [http_socket(timeouts_server) for _ in range(MAX_CONNECTIONS)]
    try:
        extra = http_socket(timeouts_server)
        with extra:
            try:
                extra.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            # Closed unanswered, and right away (well before the idle timeout would).
            elapsed, received = closed_after(extra, HEADER + 5)
            assert received == b"", received
            assert elapsed < IDLE * 0.8, elapsed
    finally:
        for s in held:
            s.close()
    # Slots come back when connections close.
    deadline = time.monotonic() + 5
    while True:
        try:
            status, _ = http_request(timeouts_server.http_base, "GET", "/health")
        except OSError:
            status = None
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200


def test_websocket_session_outlives_the_http_timeouts(timeouts_server):
    user, pw = unique("wsidle"), "Pw" + unique("")
    status, body = create_account(timeouts_server, user, pw)
    assert status == 201, body
    with ws_connect(timeouts_server.websocket_url) as ws:
        assert ws_login(ws, user, pw, "idle") == f"{user}@{DOMAIN}/idle"
        # Silent for longer than both HTTP timeouts.
        time.sleep(HEADER + IDLE + 0.5)
        ws.send(f"<iq xmlns='jabber:client' type='get' id='p1' to='{DOMAIN}'>"
                "<ping xmlns='urn:xmpp:ping'/></iq>")
        reply = recv(ws)
        assert reply.get("id") == "p1" and reply.get("type") == "result", ET.tostring(reply)

