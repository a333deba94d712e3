"""XMPP over WebSocket (RFC 7395) at /xmpp-websocket on the HTTP listener.

A real JavaScript client, @xmpp/client (installed by js/setup.sh), logs in over
ws:// and chats with a slixmpp TCP client both ways; raw WebSocket cases (the
``websockets`` library) check the framing rules: the ``xmpp`` subprotocol,
<open/>/<close/>, one element per frame, binary and oversize frames, and the
URL that ``POST /auth/xmpp-token`` hands out. The development config treats
plain ws:// as secure (``http.websocket_secure``); ``plain_ws_server`` and
``wss_server`` cover the other settings.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import time
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Optional

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from xmpp_helpers import (
    DOMAIN,
    NS_BIND,
    NS_MUC,
    NS_MUC_USER,
    NS_SASL,
    NS_STREAM,
    NS_STREAMS_ERR,
    TIMEOUT,
    add_member,
    connect_muc,
    create_waddle,
    fresh_source_ip,
    http_request,
    insecure_ssl_context,
    is_message_with_body,
    join_room,
    q,
    unique,
)

JS_DIR = Path(__file__).resolve().parent / "js"
NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
OPEN = f"<open xmlns='{NS_FRAMING}' to='{DOMAIN}' version='1.0'/>"
CLOSE = f"<close xmlns='{NS_FRAMING}'/>"
# The suite runs servers with c2s.max_stanza_bytes = 65536 (conftest).
MAX_STANZA_BYTES = 65536


# --------------------------------------------------------------------------
# @xmpp/client, scripted (js/client.mjs)
# --------------------------------------------------------------------------


class JsClient:
    """One js/client.mjs process: JSON commands in, JSON events out."""

    def __init__(self, proc: asyncio.subprocess.Process, what: str):
        self.proc = proc
        self.what = what
        self.events: list[dict] = []

    @classmethod
    async def start(cls, service: str, username: str, password: str, mechanism: str,
                    resource: str = "web") -> "JsClient":
        node = shutil.which("node")
        assert node, "node is not installed (tests/interop/js/setup.sh needs Node >= 20.10)"
        options = {"service": service, "domain": DOMAIN, "username": username,
                   "password": password, "mechanism": mechanism, "resource": resource}
        proc = await asyncio.create_subprocess_exec(
            node, "--experimental-websocket", "--no-warnings", str(JS_DIR / "client.mjs"),
            json.dumps(options), cwd=JS_DIR, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return cls(proc, f"@xmpp/client {username} ({mechanism})")

    async def event(self, name: str, timeout: float = TIMEOUT) -> dict:
        """The next event called ``name``; fails on an ``error`` event, on exit,
        or after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{self.what}: no {name!r} event within {timeout}s; "
                                     f"events so far: {self.events}")
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            except asyncio.TimeoutError:
                continue
            if not line:
                stderr = (await self.proc.stderr.read()).decode(errors="replace")
                raise AssertionError(f"{self.what} exited before {name!r}; events: {self.events}; "
                                     f"stderr:\n{stderr[-4000:]}")
            event = json.loads(line)
            self.events.append(event)
            if event["event"] == "error":
                raise AssertionError(f"{self.what} failed: {event}")
            if event["event"] == name:
                return event

    async def command(self, **command: Any) -> None:
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        await self.proc.stdin.drain()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await asyncio.wait_for(self.proc.wait(), TIMEOUT)


@pytest.fixture
async def js_client():
    """``await js_client(service, username, password, mechanism)`` -> a started
    JsClient; every process is killed at teardown."""
    started: list[JsClient] = []

    async def start(*args: Any, **kwargs: Any) -> JsClient:
        client = await JsClient.start(*args, **kwargs)
        started.append(client)
        return client

    yield start
    for client in started:
        await client.kill()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "PLAIN"])
async def test_xmpp_client_over_websocket_chats_with_a_tcp_client(
        server, make_account, xmpp, js_client, mechanism):
    web_user, web_password = make_account("web")
    tcp_user, tcp_password = make_account("tcp")
    tcp = await xmpp(tcp_user, tcp_password, "desk")
    web = await js_client(server.websocket_url, web_user, web_password, mechanism)

    offered = await web.event("mechanisms")
    # The development config treats loopback ws:// as secure: PLAIN is offered too.
    assert {"SCRAM-SHA-1", "PLAIN"} <= set(offered["mechanisms"]), offered
    online = await web.event("online")
    web_jid = f"{web_user}@{DOMAIN}/web"
    assert online["jid"] == web_jid and online["mechanism"] == mechanism, online

    # WebSocket -> TCP
    body = unique("from-the-web-")
    await web.command(cmd="send", to=str(tcp.boundjid), body=body, id="w1")
    got = await tcp.wait_for(is_message_with_body(body, "chat"), "the WebSocket client's message")
    assert str(got["from"]) == web_jid, got

    # TCP -> WebSocket, each frame one namespaced stanza (RFC 7395 §3.3.3).
    body = unique("from-tcp-")
    tcp.send_message(mto=web_jid, mbody=body, mtype="chat")
    while True:
        message = await web.event("message")
        if message["body"] == body:
            break
    assert message["from"] == str(tcp.boundjid) and message["type"] == "chat", message
    assert message["xmlns"] == "jabber:client", message

    # XEP-0199 ping to the server.
    await web.command(cmd="ping", to=DOMAIN)
    pong = await web.event("pong")
    assert pong == {"event": "pong", "type": "result", "from": DOMAIN}, pong

    await web.command(cmd="state")
    state = await web.event("state")
    # Stream management (XEP-0198) over WebSocket: advertised after authentication,
    # and @xmpp/client's <enable resume='true'/> gets <enabled/>.
    assert state["sm_advertised"], f"no <sm/> feature over WebSocket: {state}"
    assert state["sm_enabled"], f"SM advertised over WebSocket but not enabled: {state}"

    await web.command(cmd="stop")
    await web.event("stopped")


# --------------------------------------------------------------------------
# raw WebSocket
# --------------------------------------------------------------------------


def ws_connect(url: str, subprotocols: Optional[list[str]] = ("xmpp",),
               source_ip: Optional[str] = None) -> ClientConnection:
    """A WebSocket to ``url`` offering ``subprotocols``, optionally from a chosen
    loopback source address (see ``fresh_source_ip``)."""
    ssl = insecure_ssl_context() if url.startswith("wss:") else None
    sock = None
    if source_ip is not None:
        parsed = urllib.parse.urlsplit(url)
        sock = socket.create_connection((parsed.hostname, parsed.port), timeout=TIMEOUT,
                                        source_address=(source_ip, 0))
    return connect(url, subprotocols=list(subprotocols) if subprotocols else None, sock=sock,
                   open_timeout=TIMEOUT, close_timeout=TIMEOUT, max_size=None, ssl=ssl)


def recv(ws: ClientConnection) -> ET.Element:
    """The next frame, which must be a text frame holding one XML document."""
    frame = ws.recv(timeout=TIMEOUT)
    assert isinstance(frame, str), f"binary frame from the server: {frame!r}"
    return ET.fromstring(frame)


def open_stream(ws: ClientConnection) -> tuple[ET.Element, ET.Element]:
    """Sends <open/>; returns the server's <open/> and <stream:features/>."""
    ws.send(OPEN)
    opened, features = recv(ws), recv(ws)
    assert opened.tag == q(NS_FRAMING, "open"), ET.tostring(opened)
    assert features.tag == q(NS_STREAM, "features"), ET.tostring(features)
    return opened, features


def mechanisms(features: ET.Element) -> set[str]:
    return {m.text for m in features.iter(q(NS_SASL, "mechanism"))}


def expect_stream_error(ws: ClientConnection, condition: str) -> ET.Element:
    """A stream error with ``condition``, then <close/>, then the WebSocket closes."""
    error = recv(ws)
    assert error.tag == q(NS_STREAM, "error"), ET.tostring(error)
    assert error.find(q(NS_STREAMS_ERR, condition)) is not None, ET.tostring(error)
    expect_close(ws)
    return error


def expect_close(ws: ClientConnection) -> None:
    closing = recv(ws)
    assert closing.tag == q(NS_FRAMING, "close"), ET.tostring(closing)
    with pytest.raises(ConnectionClosed):
        ws.recv(timeout=TIMEOUT)


def error_text(error: ET.Element) -> str:
    text = error.find(q(NS_STREAMS_ERR, "text"))
    return text.text if text is not None else ""


def test_websocket_requires_the_xmpp_subprotocol(server, http):
    for offered in (None, ["chat"]):
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(server.websocket_url, offered)
        assert refused.value.response.status_code == 400, offered
        assert b"subprotocol_required" in refused.value.response.body, refused.value.response.body
    status, body = http("GET", "/xmpp-websocket")
    assert status == 400 and body["error"]["code"] == "websocket_required", (status, body)


def test_open_features_and_close(server):
    with ws_connect(server.websocket_url) as ws:
        assert ws.subprotocol == "xmpp"
        opened, features = open_stream(ws)
        assert opened.get("from") == DOMAIN and opened.get("version") == "1.0", opened.attrib
        assert opened.get("id"), opened.attrib
        assert features.find(q("urn:ietf:params:xml:ns:xmpp-tls", "starttls")) is None, \
            "STARTTLS offered over WebSocket (RFC 7395 §3.7: TLS is the WebSocket's)"
        assert {"SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"} <= mechanisms(features)
        ws.send(CLOSE)
        expect_close(ws)


def test_binary_frame_is_a_stream_error(server):
    with ws_connect(server.websocket_url) as ws:
        open_stream(ws)
        ws.send(b"<presence xmlns='jabber:client'/>")
        error = expect_stream_error(ws, "not-well-formed")
        assert "binary" in error_text(error), ET.tostring(error)


@pytest.mark.parametrize("frame", ["<a xmlns='jabber:client'/><b xmlns='jabber:client'/>",
                                   "not xml", "<presence xmlns='jabber:client'>"])
def test_a_frame_that_is_not_one_element_is_a_stream_error(server, frame):
    with ws_connect(server.websocket_url) as ws:
        open_stream(ws)
        ws.send(frame)
        error = expect_stream_error(ws, "not-well-formed")
        assert "exactly one complete XML element" in error_text(error), ET.tostring(error)


def test_open_outside_the_framing_namespace_is_a_stream_error(server):
    with ws_connect(server.websocket_url) as ws:
        ws.send(f"<open to='{DOMAIN}' version='1.0'/>")
        # The stream error needs a stream: the server opens one first.
        assert recv(ws).tag == q(NS_FRAMING, "open")
        expect_stream_error(ws, "invalid-namespace")


def test_oversize_frame_is_a_policy_violation(server, make_account):
    username, password = make_account("big")
    with ws_connect(server.websocket_url) as ws:
        login(ws, username, password)
        body = "x" * (MAX_STANZA_BYTES + 1)
        ws.send(f"<message xmlns='jabber:client' to='{username}@{DOMAIN}'><body>{body}</body></message>")
        error = expect_stream_error(ws, "policy-violation")
        assert str(MAX_STANZA_BYTES) in error_text(error), ET.tostring(error)


def test_a_frame_beyond_twice_the_limit_is_cut_off(server):
    # Past twice the stanza limit the WebSocket layer refuses the message before
    # reading it and the connection is dropped (no stream error can get through).
    with ws_connect(server.websocket_url) as ws:
        open_stream(ws)
        ws.send("<presence xmlns='jabber:client'>" + " " * (2 * MAX_STANZA_BYTES) + "</presence>")
        with pytest.raises(ConnectionClosed):
            while True:
                frame = ws.recv(timeout=TIMEOUT)
                assert "<presence" not in frame, "the oversize frame was accepted"
    with ws_connect(server.websocket_url) as ws:
        open_stream(ws)


def login(ws: ClientConnection, username: str, secret: str, resource: str = "raw") -> str:
    """PLAIN login and bind over a raw WebSocket; the bound full JID."""
    _, features = open_stream(ws)
    assert "PLAIN" in mechanisms(features), ET.tostring(features)
    success = plain_auth(ws, username, secret)
    assert success.tag == q(NS_SASL, "success"), ET.tostring(success)
    _, features = open_stream(ws)
    assert features.find(q(NS_BIND, "bind")) is not None, ET.tostring(features)
    ws.send(f"<iq xmlns='jabber:client' type='set' id='bind1'><bind xmlns='{NS_BIND}'>"
            f"<resource>{resource}</resource></bind></iq>")
    bound = recv(ws)
    assert bound.tag == "{jabber:client}iq" and bound.get("type") == "result", ET.tostring(bound)
    return bound.find(f"{q(NS_BIND, 'bind')}/{q(NS_BIND, 'jid')}").text


def plain_auth(ws: ClientConnection, username: str, secret: str) -> ET.Element:
    payload = base64.b64encode(f"\0{username}\0{secret}".encode()).decode()
    ws.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{payload}</auth>")
    return recv(ws)


def test_failed_websocket_logins_are_limited_per_client_address(server, make_account):
    username, password = make_account("lim")
    source = fresh_source_ip()
    # The suite's auth.max_auth_failures is 5: five failures from one address, for
    # accounts that do not exist (so that no account is blocked) ...
    for _ in range(5):
        with ws_connect(server.websocket_url, source_ip=source) as ws:
            open_stream(ws)
            failure = plain_auth(ws, unique("nobody"), "wrong password")
            assert failure.find(q(NS_SASL, "not-authorized")) is not None, ET.tostring(failure)
    # ... block that address, even with the right password ...
    with ws_connect(server.websocket_url, source_ip=source) as ws:
        open_stream(ws)
        failure = plain_auth(ws, username, password)
        assert failure.tag == q(NS_SASL, "failure"), ET.tostring(failure)
        assert "too many failed attempts" in (failure.findtext(q(NS_SASL, "text")) or ""), \
            ET.tostring(failure)
        expect_stream_error(ws, "policy-violation")
    # ... and only that address.
    with ws_connect(server.websocket_url) as ws:
        assert login(ws, username, password, "ok") == f"{username}@{DOMAIN}/ok"


def read_until(ws: ClientConnection, pred, what: str) -> ET.Element:
    """The first frame matching ``pred`` within TIMEOUT (others are skipped)."""
    deadline = time.monotonic() + TIMEOUT
    seen = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {what} within {TIMEOUT}s; frames: {seen[-8:]}")
        try:
            frame = ws.recv(timeout=remaining)
        except TimeoutError:
            continue
        seen.append(frame)
        el = ET.fromstring(frame)
        if pred(el):
            return el


async def test_room_messages_reach_a_websocket_occupant(server, http, make_user, xmpp):
    # Fan-out writes one shared serialization per room message with each occupant's
    # address spliced in; over WebSocket that copy must still be one namespaced frame.
    alice, bob = make_user("alice"), make_user("bob")
    waddle = create_waddle(http, alice)
    add_member(http, waddle, alice, bob)
    room = waddle.room("general")
    b = await connect_muc(xmpp, bob)
    ws = await asyncio.to_thread(ws_connect, server.websocket_url)
    try:
        web_jid = await asyncio.to_thread(login, ws, alice.username, alice.password, "web")
        ws.send(f"<presence xmlns='jabber:client' to='{room}/alice'>"
                f"<x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>")

        def self_presence(el: ET.Element) -> bool:
            statuses = {s.get("code") for s in el.iter(q(NS_MUC_USER, "status"))}
            return el.tag == "{jabber:client}presence" and el.get("from") == f"{room}/alice" \
                and "110" in statuses
        await asyncio.to_thread(read_until, ws, self_presence, "the room's self-presence")
        await join_room(b, room, "bob", maxstanzas=0)
        body = unique("to-the-room-")
        b.send_message(mto=room, mbody=body, mtype="groupchat")
        message = await asyncio.to_thread(
            read_until, ws, lambda el: el.tag == "{jabber:client}message"
            and el.findtext("{jabber:client}body") == body, "the room message")
        assert message.get("from") == f"{room}/bob", message.attrib
        assert message.get("to") == web_jid and message.get("type") == "groupchat", message.attrib
    finally:
        ws.close()


def test_the_websocket_url_of_an_xmpp_token_is_the_endpoint(server, http, make_user):
    user = make_user("tok")
    status, token = http("POST", "/auth/xmpp-token", bearer=user.token)
    assert status == 200, (status, token)
    url = token["websocket_url"]
    assert url == f"ws://{DOMAIN}:{server.http_port}/xmpp-websocket", token
    # The URL as handed out (name and all), with the token as the PLAIN password.
    with ws_connect(url) as ws:
        assert login(ws, user.username, token["token"], "tok") == f"{user.username}@{DOMAIN}/tok"
        ws.send(f"<iq xmlns='jabber:client' type='get' id='p1' to='{DOMAIN}'>"
                "<ping xmlns='urn:xmpp:ping'/></iq>")
        pong = recv(ws)
        assert pong.get("id") == "p1" and pong.get("type") == "result", ET.tostring(pong)
        ws.send(CLOSE)
        expect_close(ws)


def test_plain_ws_obeys_require_tls_unless_declared_secure(plain_ws_server):
    with ws_connect(plain_ws_server.websocket_url) as ws:
        _, features = open_stream(ws)
        assert not mechanisms(features), ET.tostring(features)
        assert features.find(q("urn:ietf:params:xml:ns:xmpp-tls", "starttls")) is None
        ws.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-1'>biwsbj1hLHI9eA==</auth>")
        failure = recv(ws)
        assert failure.tag == q(NS_SASL, "failure"), ET.tostring(failure)
        assert failure.find(q(NS_SASL, "encryption-required")) is not None, ET.tostring(failure)


def test_wss_with_the_node_certificate(wss_server):
    info = wss_server
    assert info.http_base.startswith("https://"), info.http_base
    name = unique("wss")
    password = "Pw-" + name
    credentials = {"username": name, "password": password}
    status, body = http_request(info.http_base, "POST", "/v1/accounts", json=credentials)
    assert status == 201, (status, body)
    status, session = http_request(info.http_base, "POST", "/auth/session", json=credentials)
    assert status == 200, (status, session)
    status, token = http_request(info.http_base, "POST", "/auth/xmpp-token", bearer=session["token"])
    assert status == 200 and token["websocket_url"] == \
        f"wss://{DOMAIN}:{info.http_port}/xmpp-websocket", token
    with ws_connect(info.websocket_url) as ws:
        # Secure by TLS alone (websocket_secure is off on this server).
        assert login(ws, name, password, "tls") == f"{name}@{DOMAIN}/tls"
        ws.send(CLOSE)
        expect_close(ws)

