"""Shared helpers for the waddle black-box interop suite.

Everything here talks to a real ``waddle`` process over loopback:

* ``http_request``: tiny http.client-based JSON client for the HTTP API.
* ``XmppClient`` / ``connect_client``: a slixmpp ``ClientXMPP`` that records
  every stanza it receives so tests can assert on what actually arrived.
* ``RawStream``: a blocking socket + ssl XMPP speaker for wire-level tests
  (stream errors, pre-TLS features, hand-written SASL).

Every wait is bounded (``TIMEOUT`` seconds, overridable through the
``INTEROP_TIMEOUT`` environment variable) so that a broken server makes
tests fail instead of hanging.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json as jsonlib
import os
import re
import secrets
import socket
import ssl
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Callable, Optional

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout

DOMAIN = "localhost"
HOST = "127.0.0.1"
# Knobs deliberately do not start with WADDLE_: the server rejects unknown
# WADDLE_* variables, and the fixture strips inherited ones anyway.
TIMEOUT = float(os.environ.get("INTEROP_TIMEOUT", "10"))
# How long we watch for something that must NOT arrive.
QUIET_PERIOD = float(os.environ.get("INTEROP_QUIET_PERIOD", "1.0"))
# Keepalive settings of the ``ping_server`` fixture: ping a client after
# this much silence, give up this long after an unanswered ping.
PING_INTERVAL_SECS = 1
PING_TIMEOUT_SECS = 2

NS_CLIENT = "jabber:client"
NS_STREAM = "http://etherx.jabber.org/streams"
NS_STREAMS_ERR = "urn:ietf:params:xml:ns:xmpp-streams"
NS_STANZAS_ERR = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_ROSTER = "jabber:iq:roster"
NS_REGISTER = "jabber:iq:register"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_PING = "urn:xmpp:ping"
NS_VCARD = "vcard-temp"
NS_DELAY = "urn:xmpp:delay"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_MUC_ADMIN = "http://jabber.org/protocol/muc#admin"
NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
NS_SID = "urn:xmpp:sid:0"
NS_DATA = "jabber:x:data"
NS_REACTIONS = "urn:xmpp:reactions:0"
NS_RETRACT = "urn:xmpp:message-retract:1"
NS_FALLBACK = "urn:xmpp:fallback:0"

MUC_DOMAIN = f"muc.{DOMAIN}"
# slixmpp plugins for clients that use rooms and archives (XmppClient(plugins=...)).
MUC_PLUGINS = ("xep_0045", "xep_0313")


async def connect_muc(xmpp, user, resource="pc"):
    """A logged-in client of `user` with the MUC and MAM plugins (`xmpp` is the fixture)."""
    return await xmpp(user.username, user.password, resource, plugins=MUC_PLUGINS)

STREAM_HEADER = (
    "<?xml version='1.0'?>"
    "<stream:stream to='localhost' version='1.0' xmlns='jabber:client' "
    "xmlns:stream='http://etherx.jabber.org/streams'>"
)


def q(ns: str, tag: str) -> str:
    """Clark notation: ``{ns}tag``."""
    return "{%s}%s" % (ns, tag)


_next_source = [0]


def fresh_source_ip() -> str:
    """A loopback source address not used before in this run (127.0.0.2, ...).

    The server rate-limits failed logins per client address (and per
    account). Tests that fail authentication on purpose connect from their
    own address so that 127.0.0.1, used by every other test, never gets
    blocked. Linux routes all of 127.0.0.0/8 to the loopback interface.
    """
    n = _next_source[0]
    _next_source[0] += 1
    return f"127.0.{n // 250}.{n % 250 + 2}"


def unique(prefix: str) -> str:
    """A fresh, nodeprep-safe localpart (letters and digits only)."""
    return f"{prefix}{secrets.token_hex(5)}"


# --------------------------------------------------------------------------
# Server description + HTTP
# --------------------------------------------------------------------------


@dataclass
class ServerInfo:
    starttls_port: int
    direct_tls_port: int
    http_port: int
    log_path: str
    data_dir: str
    proc: Any = None  # subprocess.Popen
    name: str = "server"  # fixture that started it
    host: str = HOST
    domain: str = DOMAIN
    http_tls: bool = False  # the HTTP listener speaks TLS (http.tls)

    @property
    def http_base(self) -> str:
        scheme = "https" if self.http_tls else "http"
        return f"{scheme}://{self.host}:{self.http_port}"

    @property
    def websocket_url(self) -> str:
        """XMPP over WebSocket on this server, by address (no name lookup)."""
        scheme = "wss" if self.http_tls else "ws"
        return f"{scheme}://{self.host}:{self.http_port}/xmpp-websocket"

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None

    def log_tail(self, max_bytes: int = 8000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - max_bytes))
                return fh.read().decode("utf-8", "replace")
        except OSError as exc:  # pragma: no cover - diagnostics only
            return f"<cannot read server log: {exc}>"


def http_request(
    base: str,
    method: str,
    path: str,
    json: Any = None,
    bearer: Optional[str] = None,
    headers: Optional[dict] = None,
    timeout: float = TIMEOUT,
    source_ip: Optional[str] = None,
) -> tuple[int, Any]:
    """Send one HTTP request; return ``(status, parsed JSON | text | None)``.

    Non-2xx answers are returned, not raised. ``source_ip`` picks the local
    loopback address to connect from (see ``fresh_source_ip``).
    """
    parsed = urllib.parse.urlsplit(base)
    body = None
    hdrs = {"Accept": "application/json", "Connection": "close"}
    if json is not None:
        body = jsonlib.dumps(json).encode()
        hdrs["Content-Type"] = "application/json"
    if bearer is not None:
        hdrs["Authorization"] = f"Bearer {bearer}"
    if headers:
        hdrs.update(headers)
    source = (source_ip, 0) if source_ip else None
    if parsed.scheme == "https":
        conn = http.client.HTTPSConnection(parsed.hostname, parsed.port, timeout=timeout,
                                           source_address=source, context=insecure_ssl_context())
    else:
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout,
                                          source_address=source)
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        status, raw = resp.status, resp.read()
    finally:
        conn.close()
    if not raw:
        return status, None
    try:
        return status, jsonlib.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


@dataclass
class User:
    """An account made through the HTTP API, with a bearer session token."""
    username: str
    password: str
    token: str

    @property
    def jid(self) -> str:
        return f"{self.username}@{DOMAIN}"


def metric(http: Callable, name: str, labels: str) -> float:
    """The value of one Prometheus sample (``name{labels}``) from ``GET /metrics``."""
    status, text = http("GET", "/metrics")
    assert status == 200 and isinstance(text, str), (status, text)
    m = re.search(r"^" + re.escape(f"{name}{{{labels}}}") + r" (\S+)$", text, re.M)
    assert m, f"{name}{{{labels}}} not in /metrics:\n{text}"
    return float(m.group(1))


def api_session(http: Callable, username: str, password: str) -> str:
    """POST /auth/session → the bearer token."""
    status, body = http("POST", "/auth/session", json={"username": username, "password": password})
    assert status in (200, 201) and isinstance(body, dict) and body.get("token"), (status, body)
    return body["token"]


def assert_error_envelope(body: Any) -> None:
    """The API's JSON error shape: ``{"error": {"code": str, "message": str}}``."""
    assert isinstance(body, dict), f"expected JSON object error body, got {body!r}"
    assert "error" in body, f"missing 'error' key in {body!r}"
    err = body["error"]
    assert isinstance(err, dict), f"'error' must be an object: {body!r}"
    assert isinstance(err.get("code"), str) and err["code"], f"bad error.code in {body!r}"
    assert isinstance(err.get("message"), str) and err["message"], f"bad error.message in {body!r}"


# --------------------------------------------------------------------------
# slixmpp client
# --------------------------------------------------------------------------


def insecure_ssl_context() -> ssl.SSLContext:
    """The test server uses a self-signed certificate: skip verification."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def stanza_kind(st: Any) -> str:
    """Local name of a recorded stanza's top element ('message', 'iq', ...)."""
    tag = st.xml.tag
    return tag.rsplit("}", 1)[-1]


def bare(jid: Any) -> str:
    return str(jid).split("/", 1)[0]


def stream_error_condition(elem: ET.Element) -> Optional[str]:
    """Condition name of a ``<stream:error>`` element (ignores ``<text>``)."""
    for child in elem:
        if child.tag.startswith("{%s}" % NS_STREAMS_ERR) and not child.tag.endswith("}text"):
            return child.tag.split("}", 1)[1]
    return None


def stanza_error(st: Any) -> tuple[Optional[str], Optional[str]]:
    """(type, condition) of a stanza's ``<error/>`` child, read from raw XML.
    Accepts a slixmpp stanza or a bare ElementTree element."""
    elem = st if isinstance(st, ET.Element) else st.xml
    err = elem.find(q(NS_CLIENT, "error"))
    if err is None:
        return None, None
    cond = None
    for child in err:
        if child.tag.startswith("{%s}" % NS_STANZAS_ERR) and not child.tag.endswith("}text"):
            cond = child.tag.split("}", 1)[1]
            break
    return err.get("type"), cond


def is_server_ping(elem: ET.Element) -> bool:
    """A XEP-0199 ping request (``<iq type='get'><ping/></iq>``) on a raw stream."""
    return (elem.tag == q(NS_CLIENT, "iq") and elem.get("type") == "get"
            and elem.find(q(NS_PING, "ping")) is not None)


class XmppClient(slixmpp.ClientXMPP):
    """slixmpp client that records every inbound stanza for assertions."""

    def __init__(self, jid: str, password: str, *, sasl_mech: Optional[str] = None,
                 inband_register: bool = False, source_ip: Optional[str] = None,
                 plugins: tuple[str, ...] = ()):
        super().__init__(jid, password, sasl_mech=sasl_mech,
                         ssl_context=insecure_ssl_context())
        self.source_ip = source_ip
        # Tests drive subscriptions explicitly; never auto-approve/subscribe.
        self.auto_authorize = None
        self.auto_subscribe = False
        self.received: list[Any] = []
        self.stream_errors: list[str] = []
        self.auth_failures: list[str] = []
        self.disconnected_flag = asyncio.Event()
        self.session_started = asyncio.Event()
        self._changed = asyncio.Event()
        self.server_offered_register = False
        self._inband_register = inband_register

        self.register_plugin("xep_0030")  # service discovery
        self.register_plugin("xep_0199")  # ping (also answers pings)
        self.register_plugin("xep_0203")  # delayed delivery
        if inband_register:
            self.register_plugin("xep_0077")
        for plugin in plugins:
            self.register_plugin(plugin)
        if "xep_0115" in self.plugin:
            # xep_0045 pulls in entity capabilities (via xep_0172 → xep_0163).
            # Keep presences free of <c/> and do not disco#info every occupant
            # (which would also spend the session's IQ rate limit).
            self.plugin["xep_0115"].broadcast = False
            self.remove_handler("Entity Capabilities")

        self.add_filter("in", self._record)
        self.add_event_handler("stream_error", self._on_stream_error)
        self.add_event_handler("failed_auth", self._on_failed_auth)
        self.add_event_handler("disconnected", self._on_disconnected)
        self.add_event_handler("session_start", self._on_session_start)

    async def _attempt_connection(self, host: str, port: int, tls: bool,
                                  server_hostname: Optional[str]) -> bool:
        """Like slixmpp's own connection attempt, but optionally bound to a
        chosen loopback source address (slixmpp has no option for that)."""
        if self.source_ip is None:
            return await super()._attempt_connection(host, port, tls, server_hostname)
        self.event_when_connected = "connected"
        if self._current_connection_attempt is None:
            return False
        try:
            await self.loop.create_connection(
                lambda: self, host, port,
                ssl=self.get_ssl_context() if tls else None,
                server_hostname=server_hostname if tls else None,
                local_addr=(self.source_ip, 0))
        except OSError as exc:
            self.event("connection_failed", exc)
            return False
        self._connect_loop_wait = 0
        return True

    # -- recording ---------------------------------------------------------
    def _record(self, stanza: Any) -> Any:
        if self._inband_register and stanza_kind(stanza) == "features":
            # Offer the XEP-0077 stream feature to slixmpp's plugin after TLS
            # and before SASL even if the server does not advertise it (the
            # plugin's own force_registration check does not recognise
            # asyncio's SSLObject).
            if stanza.xml.find("{http://jabber.org/features/iq-register}register") is not None:
                self.server_offered_register = True
            if "starttls" in self.features and "mechanisms" not in self.features:
                stanza.enable("register")
        self.received.append(stanza)
        self._changed.set()
        return stanza

    def _on_stream_error(self, err: Any) -> None:
        self.stream_errors.append(stream_error_condition(err.xml) or "?")
        self._changed.set()

    def _on_failed_auth(self, failure: Any) -> None:
        cond = None
        for child in failure.xml:
            if child.tag.startswith("{%s}" % NS_SASL) and not child.tag.endswith("}text"):
                cond = child.tag.split("}", 1)[1]
        self.auth_failures.append(cond or "?")
        self._changed.set()

    def _on_disconnected(self, _reason: Any) -> None:
        self.disconnected_flag.set()
        self._changed.set()

    def _on_session_start(self, _data: Any) -> None:
        self.session_started.set()
        self._changed.set()

    # -- waiting -----------------------------------------------------------
    def mark(self) -> int:
        """Index to pass as ``since=`` to only look at later stanzas."""
        return len(self.received)

    async def wait_for(self, pred: Callable[[Any], bool], what: str = "stanza",
                       timeout: float = TIMEOUT, since: int = 0) -> Any:
        """Return the first recorded stanza (index >= since) matching pred."""
        deadline = time.monotonic() + timeout
        idx = since
        while True:
            while idx < len(self.received):
                st = self.received[idx]
                idx += 1
                try:
                    if pred(st):
                        return st
                except (KeyError, AttributeError, ValueError):
                    continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.boundjid or self.requested_jid}: timed out after {timeout}s "
                    f"waiting for {what}; last stanzas received:\n{self.describe_recent()}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def assert_none(self, pred: Callable[[Any], bool], what: str,
                          wait: float = QUIET_PERIOD, since: int = 0) -> None:
        """Fail if a matching stanza is (or becomes, within ``wait``) recorded."""
        await asyncio.sleep(wait)
        for st in self.received[since:]:
            try:
                hit = pred(st)
            except (KeyError, AttributeError, ValueError):
                hit = False
            assert not hit, f"{self.boundjid}: unexpectedly received {what}: {st}"

    async def wait_disconnected(self, timeout: float = TIMEOUT) -> None:
        try:
            await asyncio.wait_for(self.disconnected_flag.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"{self.boundjid}: not disconnected within {timeout}s") from None

    def describe_recent(self, n: int = 8) -> str:
        tail = self.received[-n:]
        return "\n".join(f"  {st}" for st in tail) or "  <nothing>"

    # -- convenience -------------------------------------------------------
    async def iq(self, iq: Any, timeout: float = TIMEOUT) -> Any:
        """Send an Iq and return the result; IqError/IqTimeout become failures."""
        try:
            return await iq.send(timeout=timeout)
        except IqError as err:
            raise AssertionError(f"iq failed: {err.iq}") from None
        except IqTimeout:
            raise AssertionError(f"iq timed out after {timeout}s: {iq}") from None

    async def iq_xml(self, iq_type: str, payload: str, to: Optional[str] = None,
                     timeout: float = TIMEOUT) -> Any:
        """Send an Iq carrying the hand-written ``payload`` (one element,
        with its xmlns); return the answer, be it a result or an error."""
        iq = self.Iq(stype=iq_type, sto=to)
        iq.xml.append(ET.fromstring(payload))
        try:
            return await iq.send(timeout=timeout)
        except IqError as err:
            return err.iq
        except IqTimeout:
            raise AssertionError(f"iq timed out after {timeout}s: {iq}") from None

    async def sync(self, timeout: float = TIMEOUT) -> None:
        """Round-trip a ping to the server: everything we sent before it has
        been processed by the server once the answer arrives (assuming the
        server handles one session's stanzas in order)."""
        iq = self.Iq(stype="get", sto=DOMAIN)
        iq.enable("ping")
        res = await self.iq(iq, timeout)
        assert res["type"] == "result", f"ping to server failed: {res}"

    async def roster_items(self) -> dict[str, ET.Element]:
        """Fetch the roster (no versioning) as {bare jid: <item/> element}."""
        iq = self.Iq(stype="get")
        iq.enable("roster")
        res = await self.iq(iq)
        assert res["type"] == "result", f"roster get failed: {res}"
        items = {}
        for item in res.xml.iter(q(NS_ROSTER, "item")):
            items[item.get("jid")] = item
        return items

    async def close(self, wait: float = 1.0) -> None:
        """Disconnect (bounded); abort the transport if that does not work."""
        self.cancel_connection_attempt()
        if self.transport is not None:
            try:
                await asyncio.wait_for(self.disconnect(wait=wait), wait + 1.0)
            except (asyncio.TimeoutError, Exception):
                pass
        if self.transport is not None:
            self.abort()


async def connect_client(
    server: ServerInfo,
    jid: str,
    password: str,
    *,
    direct_tls: bool = False,
    sasl_mech: Optional[str] = None,
    timeout: float = TIMEOUT,
    expect_session: bool = True,
    client: Optional[XmppClient] = None,
) -> XmppClient:
    """Connect a slixmpp client to the server under test.

    STARTTLS on the c2s port by default, or direct TLS (XEP-0368) on the
    second port. Waits for ``session_start`` (bind done) unless
    ``expect_session`` is False, in which case it returns as soon as the
    session started, auth failed or the stream ended.
    """
    c = client or XmppClient(jid, password, sasl_mech=sasl_mech)
    # slixmpp tries every enabled transport in turn on a custom address;
    # enable exactly the one under test.
    c.enable_plaintext = False
    if direct_tls:
        c.enable_starttls, c.enable_direct_tls = False, True
        port = server.direct_tls_port
    else:
        c.enable_starttls, c.enable_direct_tls = True, False
        port = server.starttls_port

    failed_connect: list[Any] = []
    c.add_event_handler("connection_failed", lambda e: (failed_connect.append(e), c._changed.set()))

    c.connect(host=server.host, port=port)
    deadline = time.monotonic() + timeout
    while True:
        if c.session_started.is_set():
            # Like every real client, fetch the roster: RFC 6121 §2.1.6 sends roster
            # pushes only to resources that requested the roster.
            await asyncio.wait_for(c.get_roster(), timeout)
            return c
        if not expect_session and (c.auth_failures or c.disconnected_flag.is_set()
                                   or c.stream_errors):
            return c
        problem = None
        if failed_connect:
            problem = f"TCP/TLS connection failed: {failed_connect[0]!r}"
        elif c.stream_errors:
            problem = f"stream error(s) {c.stream_errors}"
        elif c.auth_failures:
            problem = f"SASL failure(s) {c.auth_failures}"
        elif c.disconnected_flag.is_set():
            problem = "stream closed before session start"
        elif time.monotonic() >= deadline:
            problem = f"no session_start within {timeout}s"
        if problem:
            await c.close(wait=0.2)
            if not expect_session and time.monotonic() >= deadline:
                return c
            raise AssertionError(
                f"login of {jid} on port {port} ({'direct TLS' if direct_tls else 'STARTTLS'}) "
                f"failed: {problem}; recent stanzas:\n{c.describe_recent()}")
        c._changed.clear()
        try:
            await asyncio.wait_for(c._changed.wait(), max(0.01, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            pass


async def assert_server_healthy(xmpp: Any, make_account: Callable) -> None:
    """Two fresh accounts log in with slixmpp and exchange a chat message:
    the server is still up and serving (used after abusive tests)."""
    (a, pa), (b, pb) = make_account("hca"), make_account("hcb")
    alice = await xmpp(a, pa, "h")
    bob = await xmpp(b, pb, "h")
    body = unique("health-")
    alice.send_message(mto=bob.boundjid.full, mbody=body, mtype="chat")
    msg = await bob.wait_for(is_message_with_body(body, "chat"), "health-check chat")
    assert msg.xml.get("from") == alice.boundjid.full, msg


# Predicates -----------------------------------------------------------------

def is_message_with_body(body: str, mtype: Optional[str] = None) -> Callable[[Any], bool]:
    def pred(st: Any) -> bool:
        if stanza_kind(st) != "message":
            return False
        b = st.xml.find(q(NS_CLIENT, "body"))
        if b is None or b.text != body:
            return False
        return mtype is None or st.xml.get("type", "normal") == mtype
    return pred


def is_stream_error(st: Any) -> bool:
    return st.xml.tag == q(NS_STREAM, "error")


def is_presence(from_: str, ptype: Optional[str] = None,
                status: Optional[str] = None) -> Callable[[Any], bool]:
    """Presence from ``from_`` (bare or full JID; bare matches any resource)."""
    def pred(st: Any) -> bool:
        if stanza_kind(st) != "presence":
            return False
        frm = st.xml.get("from", "")
        if "/" in from_:
            if frm != from_:
                return False
        elif bare(frm) != from_:
            return False
        if (st.xml.get("type") or None) != ptype:
            return False
        if status is not None:
            s = st.xml.find(q(NS_CLIENT, "status"))
            if s is None or s.text != status:
                return False
        return True
    return pred


def is_roster_push(contact: str, subscription: Optional[str] = None) -> Callable[[Any], bool]:
    def pred(st: Any) -> bool:
        if stanza_kind(st) != "iq" or st.xml.get("type") != "set":
            return False
        for item in st.xml.iter(q(NS_ROSTER, "item")):
            if item.get("jid") == contact and (
                    subscription is None or item.get("subscription", "none") == subscription):
                return True
        return False
    return pred


# Multi-step flows ------------------------------------------------------------

async def subscribe_and_approve(alice: XmppClient, bob: XmppClient) -> None:
    """alice subscribes to bob's presence; bob approves. Both must already
    have sent initial presence. Asserts every step the server must take."""
    a, b = alice.boundjid.bare, bob.boundjid.bare
    a_mark, b_mark = alice.mark(), bob.mark()
    alice.send_presence(pto=b, ptype="subscribe")
    # RFC 6121 3.1.2: roster push to the user with ask='subscribe'
    push = await alice.wait_for(is_roster_push(b), "roster push for outbound subscribe",
                                since=a_mark)
    item = next(push.xml.iter(q(NS_ROSTER, "item")))
    assert item.get("subscription", "none") == "none", push
    assert item.get("ask") == "subscribe", push
    # RFC 6121 3.1.3: the contact receives the request from the user's bare JID
    req = await bob.wait_for(is_presence(a, "subscribe"), "inbound subscription request",
                             since=b_mark)
    assert req.xml.get("from") == a, f"subscribe must come from the bare JID: {req}"

    bob.send_presence(pto=a, ptype="subscribed")
    # RFC 6121 3.1.5: contact gets a roster push with subscription='from'
    await bob.wait_for(is_roster_push(a, "from"), "contact's roster push 'from'", since=b_mark)
    # RFC 6121 3.1.6: user gets <subscribed/> and a roster push with 'to'
    await alice.wait_for(is_presence(b, "subscribed"), "subscribed presence", since=a_mark)
    await alice.wait_for(is_roster_push(b, "to"), "user's roster push 'to'", since=a_mark)


# --------------------------------------------------------------------------
# raw socket XMPP
# --------------------------------------------------------------------------


class StreamClosed(Exception):
    """The server closed the XML stream or the TCP connection."""


class RawStream:
    """Minimal blocking XMPP speaker for wire-level tests."""

    def __init__(self, host: str, port: int, timeout: float = TIMEOUT,
                 source_ip: Optional[str] = None):
        self.sock: socket.socket = socket.create_connection(
            (host, port), timeout=timeout,
            source_address=(source_ip, 0) if source_ip else None)
        self.timeout = timeout
        self.raw_in = bytearray()  # everything received (decrypted), all streams
        self.elements: list[ET.Element] = []  # top-level children, current stream
        self.stream_attrs: Optional[dict] = None
        self.stream_ended = False  # saw </stream:stream>
        self.eof = False  # TCP/TLS connection closed by peer
        self.reset_by_peer = False
        self.parse_error: Optional[ET.ParseError] = None
        self._idc = 0
        self._reset_parser()

    # -- plumbing ------------------------------------------------------------
    def _reset_parser(self) -> None:
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.stream_attrs = None
        self.elements = []
        self._pos = 0

    def next_id(self) -> str:
        self._idc += 1
        return f"raw{self._idc}"

    def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _recv_once(self, timeout: float) -> bool:
        """Read once (up to ``timeout``); feed the parser. False on timeout."""
        if self.eof:
            return False
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return False
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            data = b""
        except (ConnectionResetError, BrokenPipeError):
            self.reset_by_peer = True
            data = b""
        except ssl.SSLError as exc:
            if "APPLICATION_DATA_AFTER_CLOSE_NOTIFY" in str(exc) or "EOF" in str(exc):
                data = b""
            else:
                raise
        if not data:
            self.eof = True
            return True
        self.raw_in += data
        if self.parse_error is not None:
            return True
        try:
            self.parser.feed(data)
            events = list(self.parser.read_events())
        except ET.ParseError as exc:
            # The server sent something that is not XML: remember it, keep
            # collecting raw bytes, and report the stream as unusable.
            self.parse_error = exc
            return True
        for event, elem in events:
            if event == "start":
                self.depth += 1
                if self.depth == 1:
                    self.stream_attrs = dict(elem.attrib)
            else:
                self.depth -= 1
                if self.depth == 1:
                    self.elements.append(elem)
                elif self.depth == 0:
                    self.stream_ended = True
        return True

    def read_element(self, timeout: Optional[float] = None) -> ET.Element:
        """Next top-level element of the current stream.

        Raises StreamClosed if the stream/connection ends first and
        AssertionError on timeout.
        """
        elem = self.next_element(timeout)
        if elem is None:
            raise AssertionError(f"timed out waiting for an element; {self.describe()}")
        return elem

    def next_element(self, timeout: Optional[float] = None) -> Optional[ET.Element]:
        """Like ``read_element`` but returns None when nothing arrived within
        ``timeout`` (for loops that watch a connection for a while)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while self._pos >= len(self.elements):
            if self.parse_error is not None:
                raise AssertionError(f"server sent malformed XML ({self.parse_error}); "
                                     f"{self.describe()}")
            if self.stream_ended or self.eof:
                raise StreamClosed(self.describe())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._recv_once(remaining)
        elem = self.elements[self._pos]
        self._pos += 1
        return elem

    def poll(self, timeout: float = 0.0) -> None:
        """Read whatever is available within ``timeout`` seconds."""
        self._recv_once(timeout)

    def read_until_eof(self, timeout: Optional[float] = None, send_close: bool = True,
                       tolerate_bad_xml: bool = False) -> None:
        """Drain until the peer closes the connection (bounded).

        Once the server's ``</stream:stream>`` is seen we answer with our
        own closing tag (RFC 6120 4.4) so that a server waiting for it can
        tear the TCP connection down.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        sent_close = False
        while not self.eof:
            if self.parse_error is not None and not tolerate_bad_xml:
                raise AssertionError(f"server sent malformed XML ({self.parse_error}); "
                                     f"{self.describe()}")
            if self.stream_ended and send_close and not sent_close:
                sent_close = True
                try:
                    self.send("</stream:stream>")
                except OSError:
                    pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"connection not closed within timeout; {self.describe()}")
            self._recv_once(remaining)

    def describe(self) -> str:
        tail = bytes(self.raw_in[-1500:]).decode("utf-8", "replace")
        return (f"stream_ended={self.stream_ended} eof={self.eof} "
                f"reset={self.reset_by_peer}; last bytes received: {tail!r}")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- XMPP steps ------------------------------------------------------------
    def open_stream(self) -> ET.Element:
        """Send a stream header; return the server's <stream:features/>."""
        self._reset_parser()
        self.send(STREAM_HEADER)
        feats = self.read_element()
        assert feats.tag == q(NS_STREAM, "features"), \
            f"expected <stream:features/>, got {ET.tostring(feats)!r}"
        return feats

    def starttls(self) -> ET.Element:
        """STARTTLS (no certificate verification) + stream restart."""
        self.negotiate_tls()
        return self.open_stream()

    def negotiate_tls(self) -> None:
        """``<starttls/>``, ``<proceed/>``, TLS handshake; no stream header yet
        (the caller opens the new stream, see ``restart``)."""
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        resp = self.read_element()
        assert resp.tag == q(NS_TLS, "proceed"), f"STARTTLS refused: {ET.tostring(resp)!r}"
        self.sock.settimeout(self.timeout)
        self.sock = insecure_ssl_context().wrap_socket(self.sock, server_hostname=DOMAIN)

    def restart(self) -> None:
        """Forget the current stream's state before a stream restart whose
        header the caller sends itself (e.g. pipelined with other data)."""
        self._reset_parser()

    def auth_plain(self, username: str, password: str) -> ET.Element:
        """Send SASL PLAIN; return the <success/> or <failure/> element."""
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
        self.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
        return self.read_element()

    def bind(self, resource: str) -> str:
        iq_id = self.next_id()
        self.send(f"<iq type='set' id='{iq_id}'><bind xmlns='{NS_BIND}'>"
                  f"<resource>{resource}</resource></bind></iq>")
        resp = self.read_until(lambda e: e.tag == q(NS_CLIENT, "iq") and e.get("id") == iq_id)
        assert resp.get("type") == "result", f"bind failed: {ET.tostring(resp)!r}"
        jid = resp.find(f"{q(NS_BIND, 'bind')}/{q(NS_BIND, 'jid')}")
        assert jid is not None and jid.text, f"bind result without jid: {ET.tostring(resp)!r}"
        return jid.text

    def read_until(self, pred: Callable[[ET.Element], bool],
                   timeout: Optional[float] = None) -> ET.Element:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            elem = self.read_element(max(0.0, deadline - time.monotonic()))
            if pred(elem):
                return elem

    def login(self, username: str, password: str, resource: str) -> str:
        """Header, STARTTLS, SASL PLAIN, restart, bind (+ legacy session if
        the server says it is required). Returns the bound full JID."""
        self.open_stream()
        self.starttls()
        result = self.auth_plain(username, password)
        assert result.tag == q(NS_SASL, "success"), f"PLAIN auth failed: {ET.tostring(result)!r}"
        feats = self.open_stream()
        assert feats.find(q(NS_BIND, "bind")) is not None, \
            f"no <bind/> feature after auth: {ET.tostring(feats)!r}"
        jid = self.bind(resource)
        sess = feats.find(q(NS_SESSION, "session"))
        if sess is not None and sess.find(q(NS_SESSION, "optional")) is None:
            iq_id = self.next_id()
            self.send(f"<iq type='set' id='{iq_id}'><session xmlns='{NS_SESSION}'/></iq>")
            self.read_until(lambda e: e.get("id") == iq_id)
        return jid

    def iq(self, iq_type: str, payload: str, to: Optional[str] = None,
           timeout: Optional[float] = None) -> ET.Element:
        """Send ``<iq type=... id=... [to=...]>payload</iq>``; return the
        answer with the same id (result or error)."""
        iq_id = self.next_id()
        to_attr = f" to='{to}'" if to else ""
        self.send(f"<iq type='{iq_type}' id='{iq_id}'{to_attr}>{payload}</iq>")
        return self.read_until(lambda e: e.tag == q(NS_CLIENT, "iq") and e.get("id") == iq_id
                               and e.get("type") in ("result", "error"), timeout)

    def stream_error(self) -> Optional[ET.Element]:
        for elem in self.elements:
            if elem.tag == q(NS_STREAM, "error"):
                return elem
        return None


# --------------------------------------------------------------------------
# MUC (XEP-0045), stanza ids (XEP-0359) and MAM (XEP-0313)
# --------------------------------------------------------------------------


def _elem(st: Any) -> ET.Element:
    return st if isinstance(st, ET.Element) else st.xml


def body_of(st: Any) -> Optional[str]:
    b = _elem(st).find(q(NS_CLIENT, "body"))
    return None if b is None else (b.text or "")


def muc_user_x(st: Any) -> Optional[ET.Element]:
    return _elem(st).find(q(NS_MUC_USER, "x"))


def muc_statuses(st: Any) -> set[int]:
    """Status codes of a stanza's ``<x xmlns='…muc#user'>``."""
    x = muc_user_x(st)
    if x is None:
        return set()
    return {int(s.get("code", "0")) for s in x.findall(q(NS_MUC_USER, "status"))}


def muc_item(st: Any) -> Optional[ET.Element]:
    x = muc_user_x(st)
    return None if x is None else x.find(q(NS_MUC_USER, "item"))


def stanza_ids(st: Any) -> dict[str, str]:
    """XEP-0359 ``<stanza-id/>`` children as {by: id}."""
    return {s.get("by", ""): s.get("id", "") for s in _elem(st).findall(q(NS_SID, "stanza-id"))}


def is_groupchat(room: str, body: Optional[str] = None,
                 nick: Optional[str] = None) -> Callable[[Any], bool]:
    """A (non-error) groupchat message from ``room`` (``room/nick`` if given)
    with ``body`` (if given)."""
    def pred(st: Any) -> bool:
        if stanza_kind(st) != "message" or st.xml.get("type") != "groupchat":
            return False
        frm = st.xml.get("from", "")
        if bare(frm) != room or (nick is not None and frm != f"{room}/{nick}"):
            return False
        return body is None or body_of(st) == body
    return pred


def is_error_from(kind: str, from_: str, body: Optional[str] = None) -> Callable[[Any], bool]:
    """An error stanza of ``kind`` from ``from_`` (bare: any resource),
    optionally echoing ``body``."""
    def pred(st: Any) -> bool:
        if stanza_kind(st) != kind or st.xml.get("type") != "error":
            return False
        frm = st.xml.get("from", "")
        if (frm if "/" in from_ else bare(frm)) != from_:
            return False
        return body is None or body_of(st) == body
    return pred


def is_occupant_presence(room: str, nick: str, ptype: Optional[str] = None,
                         status: Optional[int] = None) -> Callable[[Any], bool]:
    """A MUC presence from ``room/nick`` (``ptype`` None = available) that
    carries muc#user status ``status`` (if given)."""
    def pred(st: Any) -> bool:
        if stanza_kind(st) != "presence" or st.xml.get("from") != f"{room}/{nick}":
            return False
        if (st.xml.get("type") or None) != ptype or muc_user_x(st) is None:
            return False
        return status is None or status in muc_statuses(st)
    return pred


@dataclass
class Joined:
    """What a successful join returned (XEP-0045 §7.2 order)."""
    presence: Any  # the self-presence (status 110)
    subject: Any  # the subject message
    occupants: list  # presences of the occupants (self included)
    history: list  # discussion history messages (groupchat with <delay from=room>)


async def join_room(client: XmppClient, room: str, nick: str, *,
                    maxstanzas: Optional[int] = None, timeout: float = TIMEOUT) -> Joined:
    """Join with slixmpp's xep_0045 ``join_muc_wait``; a presence error or no
    self-presence + subject within ``timeout`` fails the test."""
    from slixmpp.exceptions import PresenceError
    mark = client.mark()
    try:
        pres, subject, occupants, _ = await client.plugin["xep_0045"].join_muc_wait(
            slixmpp.JID(room), nick, maxstanzas=maxstanzas, timeout=timeout)
    except PresenceError as err:
        raise AssertionError(f"{client.boundjid}: join of {room}/{nick} refused: "
                             f"{err.presence}") from None
    except asyncio.TimeoutError:
        raise AssertionError(f"{client.boundjid}: join of {room}/{nick} not completed within "
                             f"{timeout}s; recent stanzas:\n{client.describe_recent()}") from None
    # The plugin's own history list only keeps messages with a <body/>
    # (reactions, for one, have none): take history from the recorder. It
    # precedes the subject, so it has all arrived by now.
    history = []
    for st in client.received[mark:]:
        delay = st.xml.find(q(NS_DELAY, "delay"))
        if (is_groupchat(room)(st) and delay is not None and delay.get("from") == room
                and st.xml.find(q(NS_CLIENT, "subject")) is None):
            history.append(st)
    return Joined(pres, subject, occupants, history)


async def join_room_error(client: XmppClient, room: str, nick: str,
                          timeout: float = TIMEOUT) -> Any:
    """Join expecting a refusal; returns the presence error (fails if the
    join succeeds or nothing comes back)."""
    from slixmpp.exceptions import PresenceError
    try:
        joined = await client.plugin["xep_0045"].join_muc_wait(
            slixmpp.JID(room), nick, maxstanzas=0, timeout=timeout)
    except PresenceError as err:
        return err.presence
    except asyncio.TimeoutError:
        raise AssertionError(f"{client.boundjid}: no answer to the join of {room}/{nick} within "
                             f"{timeout}s; recent stanzas:\n{client.describe_recent()}") from None
    raise AssertionError(f"{client.boundjid}: join of {room}/{nick} unexpectedly succeeded: "
                         f"{joined[0]}")


def data_form(fields: Optional[dict] = None, form_type: str = "submit") -> str:
    """A XEP-0004 ``<x xmlns='jabber:x:data'>`` (as XML text) with the given
    {var: value} fields (booleans become 1/0); empty = instant-room form."""
    out = [f"<x xmlns='{NS_DATA}' type='{form_type}'>"]
    for var, value in (fields or {}).items():
        if isinstance(value, bool):
            value = "1" if value else "0"
        out.append(f"<field var='{var}'><value>{value}</value></field>")
    out.append("</x>")
    return "".join(out)


@dataclass
class MamPage:
    """One answered archive query."""
    iq: Any  # the IQ result (or error)
    results: list  # <result xmlns='urn:xmpp:mam:2'> elements, in arrival order

    @property
    def error(self) -> tuple[Optional[str], Optional[str]]:
        return stanza_error(self.iq)

    @property
    def ids(self) -> list[str]:
        return [r.get("id") for r in self.results]

    @property
    def messages(self) -> list[ET.Element]:
        """The archived (forwarded) messages."""
        return [r.find(f"{q(NS_FORWARD, 'forwarded')}/{q(NS_CLIENT, 'message')}")
                for r in self.results]

    @property
    def bodies(self) -> list[Optional[str]]:
        return [None if m is None else body_of(m) for m in self.messages]

    def _fin(self) -> ET.Element:
        fin = self.iq.xml.find(q(NS_MAM, "fin"))
        assert fin is not None, f"MAM answer without <fin/>: {self.iq}"
        return fin

    @property
    def complete(self) -> bool:
        return self._fin().get("complete") in ("true", "1")

    def rsm(self, name: str) -> Optional[str]:
        el = self._fin().find(f"{q(NS_RSM, 'set')}/{q(NS_RSM, name)}")
        return None if el is None else (el.text or "")

    @property
    def count(self) -> Optional[int]:
        c = self.rsm("count")
        return None if c is None else int(c)


async def mam_query(client: XmppClient, archive: Optional[str] = None, *,
                    max: Optional[int] = None, after: Optional[str] = None,
                    before: Optional[str | bool] = None, with_jid: Optional[str] = None,
                    timeout: float = TIMEOUT) -> MamPage:
    """XEP-0313 query on ``archive`` (a room; None = the user's own archive)
    with RSM ``max``/``after``/``before`` (``before=True``: an empty
    ``<before/>``, the last page). Errors are returned, not raised.

    Uses slixmpp's xep_0313 ``retrieve`` except for an empty ``<before/>``,
    which ``retrieve`` cannot express (it stringifies RSM values, so True
    becomes ``<before>True</before>``): that query is built from the
    plugin's stanza classes and its results are taken from the recorder."""
    to = slixmpp.JID(archive) if archive else None
    if before is True:
        iq = client.make_iq_set(ito=to)
        qid = iq["id"]
        iq["mam"]["queryid"] = qid
        if with_jid:
            iq["mam"]["with"] = slixmpp.JID(with_jid)
        if max is not None:
            iq["mam"]["rsm"]["max"] = str(max)
        if after:
            iq["mam"]["rsm"]["after"] = after
        iq["mam"]["rsm"]["before"] = True
        mark = client.mark()
        try:
            res = await iq.send(timeout=timeout)
        except IqError as err:
            return MamPage(err.iq, [])
        except IqTimeout:
            raise AssertionError(f"MAM query timed out after {timeout}s: {iq}") from None
        results = []
        for st in client.received[mark:]:
            r = st.xml.find(q(NS_MAM, "result"))
            if stanza_kind(st) == "message" and r is not None and r.get("queryid") == qid:
                results.append(r)
        return MamPage(res, results)

    rsm: dict[str, Any] = {}
    if max is not None:
        rsm["max"] = max
    if after:
        rsm["after"] = after
    if isinstance(before, str) and before:
        rsm["before"] = before
    try:
        res = await client.plugin["xep_0313"].retrieve(
            jid=to, with_jid=slixmpp.JID(with_jid) if with_jid else None,
            rsm=rsm or None, timeout=timeout)
    except IqError as err:
        return MamPage(err.iq, [])
    except IqTimeout:
        raise AssertionError(f"MAM query to {archive or 'own archive'} timed out "
                             f"after {timeout}s") from None
    return MamPage(res, [m.xml.find(q(NS_MAM, "result")) for m in res["mam"]["results"]])


async def mam_wait(client: XmppClient, archive: Optional[str], pred: Callable[[MamPage], bool],
                   what: str, *, with_jid: Optional[str] = None, max: int = 50,
                   timeout: float = TIMEOUT) -> MamPage:
    """Query until ``pred(page)`` holds (archive writes are batched off the
    delivery path, so a reflected message reaches the archive a little
    later). Polls every 0.5 s: the session's IQ budget (20 per 10 s)
    refills faster than that."""
    deadline = time.monotonic() + timeout
    while True:
        page = await mam_query(client, archive, max=max, with_jid=with_jid)
        assert page.error == (None, None), f"MAM query failed: {page.iq}"
        if pred(page):
            return page
        if time.monotonic() > deadline:
            raise AssertionError(f"archive {archive or 'own'}: {what} not seen within {timeout}s; "
                                 f"last page: ids={page.ids} bodies={page.bodies} "
                                 f"count={page.count}")
        await asyncio.sleep(0.5)


# --------------------------------------------------------------------------
# Waddles (REST)
# --------------------------------------------------------------------------


@dataclass
class Waddle:
    """A waddle as POST /v1/waddles returned it."""
    id: str
    body: dict

    def channel(self, name: str) -> dict:
        for c in self.body["channels"]:
            if c["name"] == name:
                return c
        raise AssertionError(f"waddle {self.id} has no channel {name!r}: {self.body}")

    def room(self, name: str) -> str:
        """The MUC room JID of channel ``name``."""
        return self.channel(name)["room_jid"]


def create_waddle(http: Callable, owner: User, name: Optional[str] = None) -> Waddle:
    status, body = http("POST", "/v1/waddles", json={"name": name or unique("Waddle ")},
                        bearer=owner.token)
    assert status == 201, f"waddle creation failed: {status} {body!r}"
    return Waddle(body["id"], body)


def add_member(http: Callable, waddle: Waddle, by: User, member: User,
               role: str = "member") -> None:
    status, body = http("POST", f"/v1/waddles/{waddle.id}/members",
                        json={"user": member.username, "role": role}, bearer=by.token)
    assert status == 201, f"adding {member.username} as {role} failed: {status} {body!r}"


@dataclass
class ChannelPair:
    """alice owns a fresh waddle and bob is a member; both are connected (a, b) and
    joined to one of its channel rooms without history."""
    alice: User
    bob: User
    waddle: Waddle
    room: str
    a: Any
    b: Any
    bob_join: Any


async def owner_and_member_in(http: Callable, make_user: Callable, xmpp: Callable,
                              channel: str) -> ChannelPair:
    alice, bob = make_user("alice"), make_user("bob")
    w = create_waddle(http, alice)
    add_member(http, w, alice, bob)
    room = w.room(channel)
    a, b = await connect_muc(xmpp, alice), await connect_muc(xmpp, bob)
    await join_room(a, room, "alice", maxstanzas=0)
    bob_join = await join_room(b, room, "bob", maxstanzas=0)
    return ChannelPair(alice, bob, w, room, a, b, bob_join)


def check_permission(http: Callable, caller: User, obj: str, permission: str,
                     user: Optional[str] = None) -> bool:
    """POST /v1/permissions/check → allowed."""
    req = {"object": obj, "permission": permission}
    if user is not None:
        req["user"] = user
    status, body = http("POST", "/v1/permissions/check", json=req, bearer=caller.token)
    assert status == 200, f"permission check {req} failed: {status} {body!r}"
    assert isinstance(body.get("allowed"), bool), body
    return body["allowed"]
