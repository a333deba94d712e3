"""Wire-level tests with a hand-written XMPP speaker (socket + ssl): stream
negotiation details and what the server does with abusive input. After each
abusive test a fresh slixmpp client must still be able to log in and chat."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET

import pytest

from xmpp_helpers import (
    DOMAIN,
    NS_BIND,
    NS_CLIENT,
    NS_DISCO_INFO,
    NS_REGISTER,
    NS_SASL,
    NS_STANZAS_ERR,
    NS_STREAM,
    NS_TLS,
    STREAM_HEADER,
    RawStream,
    StreamClosed,
    assert_server_healthy,
    fresh_source_ip,
    is_message_with_body,
    q,
    stanza_error,
    stream_error_condition,
    unique,
)

MAX_STANZA = 65536


def mechanisms(features: ET.Element) -> set[str]:
    mechs = features.find(q(NS_SASL, "mechanisms"))
    if mechs is None:
        return set()
    return {m.text for m in mechs.findall(q(NS_SASL, "mechanism"))}


def assert_stream_error_and_close(rs: RawStream, condition: str) -> None:
    """Server sent <stream:error><condition/></stream:error>, then
    </stream:stream>, and closed the connection."""
    rs.read_until_eof()
    err = rs.stream_error()
    assert err is not None, f"no <stream:error/>; {rs.describe()}"
    assert stream_error_condition(err) == condition, \
        f"expected <{condition}/>, got {ET.tostring(err)!r}"
    assert err.find(q("urn:ietf:params:xml:ns:xmpp-streams", condition)) is not None
    assert rs.stream_ended, f"stream error not followed by </stream:stream>; {rs.describe()}"
    assert rs.eof, "connection still open"


# ---------------------------------------------------------------------------
# negotiation
# ---------------------------------------------------------------------------


def test_stream_header_and_features_before_and_after_tls(raw):
    rs = raw()
    feats = rs.open_stream()
    attrs = rs.stream_attrs or {}
    assert attrs.get("from") == DOMAIN, attrs
    assert attrs.get("version") == "1.0", attrs
    assert attrs.get("id"), f"stream header without id: {attrs}"

    starttls = feats.find(q(NS_TLS, "starttls"))
    assert starttls is not None, f"no STARTTLS offered: {ET.tostring(feats)!r}"
    assert starttls.find(q(NS_TLS, "required")) is not None, \
        f"STARTTLS must be <required/> by default: {ET.tostring(feats)!r}"
    assert not mechanisms(feats), \
        f"SASL mechanisms offered before TLS: {mechanisms(feats)}"

    feats = rs.starttls()
    assert feats.find(q(NS_TLS, "starttls")) is None, "STARTTLS offered again inside TLS"
    mechs = mechanisms(feats)
    for mech in ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"):
        assert mech in mechs, f"{mech} not offered after TLS: {mechs}"
    assert (rs.stream_attrs or {}).get("id") != attrs.get("id"), "stream id reused after restart"


def test_auth_before_tls_is_refused(raw, make_account):
    user, pw = make_account("pretls")
    rs = raw(fresh_source_ip())
    feats = rs.open_stream()
    assert not mechanisms(feats)
    token = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
    rs.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
    try:
        resp = rs.read_element()
    except StreamClosed:
        return  # dropped the connection: acceptable, credentials never accepted
    assert resp.tag != q(NS_SASL, "success"), "PLAIN accepted over a plaintext connection!"
    if resp.tag == q(NS_SASL, "failure"):
        conds = {c.tag.split("}", 1)[1] for c in resp if c.tag.startswith("{%s}" % NS_SASL)}
        assert conds & {"encryption-required", "not-authorized", "invalid-mechanism"}, \
            f"unexpected SASL failure: {ET.tostring(resp)!r}"
    else:
        assert resp.tag == q(NS_STREAM, "error"), \
            f"expected SASL failure or stream error, got {ET.tostring(resp)!r}"
        assert stream_error_condition(resp) in (
            "policy-violation", "not-authorized", "encryption-required",
            "unsupported-stanza-type"), ET.tostring(resp)


def test_raw_login_and_bind(raw, make_account):
    user, pw = make_account("rawlogin")
    rs = raw()
    jid = rs.login(user, pw, "wire")
    assert jid == f"{user}@{DOMAIN}/wire"
    iq_id = rs.next_id()
    rs.send(f"<iq type='get' id='{iq_id}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
    res = rs.read_until(lambda e: e.tag == q(NS_CLIENT, "iq") and e.get("id") == iq_id)
    assert res.get("type") == "result", ET.tostring(res)


def test_inband_registration_raw_with_conflict(raw, make_account):
    existing, _ = make_account("taken")
    rs = raw()
    rs.open_stream()
    rs.starttls()

    rs.send(f"<iq type='get' id='r1'><query xmlns='{NS_REGISTER}'/></iq>")
    form = rs.read_until(lambda e: e.get("id") == "r1")
    assert form.get("type") == "result", ET.tostring(form)
    query = form.find(q(NS_REGISTER, "query"))
    assert query is not None, ET.tostring(form)
    assert query.find(q(NS_REGISTER, "username")) is not None, ET.tostring(form)
    assert query.find(q(NS_REGISTER, "password")) is not None, ET.tostring(form)

    rs.send(f"<iq type='set' id='r2'><query xmlns='{NS_REGISTER}'>"
            f"<username>{existing}</username><password>whatever1</password></query></iq>")
    dup = rs.read_until(lambda e: e.get("id") == "r2")
    assert dup.get("type") == "error", f"re-registered an existing user: {ET.tostring(dup)!r}"
    err = dup.find(q(NS_CLIENT, "error"))
    assert err is not None and err.find(q(NS_STANZAS_ERR, "conflict")) is not None, \
        ET.tostring(dup)

    user, pw = unique("rawreg"), "Pw" + unique("")
    rs.send(f"<iq type='set' id='r3'><query xmlns='{NS_REGISTER}'>"
            f"<username>{user}</username><password>{pw}</password></query></iq>")
    ok = rs.read_until(lambda e: e.get("id") == "r3")
    assert ok.get("type") == "result", ET.tostring(ok)

    result = rs.auth_plain(user, pw)
    assert result.tag == q(NS_SASL, "success"), ET.tostring(result)
    rs.open_stream()
    assert rs.bind("fresh") == f"{user}@{DOMAIN}/fresh"


# ---------------------------------------------------------------------------
# abuse: each followed by a health check with slixmpp
# ---------------------------------------------------------------------------


async def test_oversize_stanza_policy_violation(raw, make_account, xmpp):
    user, pw = make_account("big")
    rs = raw()
    jid = rs.login(user, pw, "big")
    body = "a" * (MAX_STANZA + 4096)
    payload = (f"<message to='{jid.split('/')[0]}' type='chat' id='big'><body>{body}"
               f"</body></message>").encode()
    # Send in slices, watching for the server's answer so that we stop
    # writing once it has given up on us.
    for i in range(0, len(payload), 8192):
        if rs.stream_error() is not None or rs.stream_ended or rs.eof:
            break
        try:
            rs.send(payload[i:i + 8192])
        except OSError:
            break
        rs.poll(0.02)
    assert_stream_error_and_close(rs, "policy-violation")
    await assert_server_healthy(xmpp, make_account)


async def test_stanza_well_under_limit_is_delivered(make_account, xmpp):
    """The limit must not be enforced on something much smaller."""
    user, pw = make_account("mid")
    c = await xmpp(user, pw, "r")
    body = unique("m") + "b" * (MAX_STANZA // 2)
    c.send_message(mto=c.boundjid.full, mbody=body, mtype="chat")
    msg = await c.wait_for(lambda st: st.xml.tag == q(NS_CLIENT, "message")
                           and (st.xml.findtext(q(NS_CLIENT, "body")) or "") == body,
                           "a 32 KiB message to self")
    assert msg is not None
    assert not c.stream_errors, c.stream_errors


async def test_malformed_xml_not_well_formed(raw, make_account, xmpp):
    user, pw = make_account("bad")
    rs = raw()
    rs.login(user, pw, "bad")
    rs.send("<message><body>x</mess>")
    assert_stream_error_and_close(rs, "not-well-formed")
    await assert_server_healthy(xmpp, make_account)


async def test_garbage_before_stream_header(raw, make_account, xmpp):
    """Non-XMPP bytes: the server answers (at most) with a stream header and
    a stream error, and closes the connection (RFC 6120 4.9.1.2)."""
    rs = raw()
    rs.send("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    rs.read_until_eof(tolerate_bad_xml=True)
    assert rs.eof, "connection still open"
    if rs.raw_in:
        assert rs.parse_error is None, \
            f"server's reply is not well-formed XML (stream error before header?); {rs.describe()}"
        err = rs.stream_error()
        assert err is not None, f"closed without a stream error; {rs.describe()}"
        assert stream_error_condition(err) in ("not-well-formed", "bad-format",
                                               "invalid-xml", "invalid-namespace"), \
            ET.tostring(err)
    await assert_server_healthy(xmpp, make_account)


async def test_repeated_sasl_failures_close_the_connection(raw, make_account, xmpp):
    """The server allows retries on one connection (RFC 6120 6.4.5) but gives
    up on it after a few failures (and never after more than
    WADDLE_AUTH_MAX_AUTH_FAILURES=5)."""
    user, _pw = make_account("brute")
    rs = raw(fresh_source_ip())  # keep 127.0.0.1 clear of the per-address limit
    rs.open_stream()
    rs.starttls()
    failures, closed = 0, False
    for attempt in range(1, 8):
        token = base64.b64encode(f"\0{user}\0wrong{attempt}".encode()).decode()
        try:
            rs.send(f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>")
            resp = rs.read_element()
        except (StreamClosed, OSError):
            closed = True
            break
        assert resp.tag != q(NS_SASL, "success"), f"wrong password accepted (attempt {attempt})"
        if resp.tag == q(NS_STREAM, "error"):
            closed = True
            break
        assert resp.tag == q(NS_SASL, "failure"), ET.tostring(resp)
        assert resp.find(q(NS_SASL, "not-authorized")) is not None, ET.tostring(resp)
        failures += 1
    assert closed, f"still accepting SASL attempts after {failures} failures"
    assert 2 <= failures <= 5, f"closed after {failures} failures (limit is 5)"
    rs.read_until_eof()
    await assert_server_healthy(xmpp, make_account)


# ---------------------------------------------------------------------------
# pipelining, stream restarts, addressing, IQ semantics
# ---------------------------------------------------------------------------


def plain_auth(user: str, pw: str) -> str:
    token = base64.b64encode(f"\0{user}\0{pw}".encode()).decode()
    return f"<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{token}</auth>"


async def test_pipelined_negotiation_and_stanzas(raw, make_account, xmpp):
    """Everything a client may send without waiting goes out in one write:
    after TLS the stream header with SASL PLAIN; after <success/> the new
    stream header, bind, initial presence, a message and a ping. The server
    must process it all, in order."""
    (a, pa), (b, pb) = make_account("pipea"), make_account("pipeb")
    bob = await xmpp(b, pb, "phone")
    bob.send_presence()
    await bob.sync()

    rs = raw()
    rs.open_stream()
    rs.negotiate_tls()
    rs.restart()
    rs.send(STREAM_HEADER + plain_auth(a, pa))  # one write
    feats = rs.read_element()
    assert feats.tag == q(NS_STREAM, "features"), ET.tostring(feats)
    assert "PLAIN" in mechanisms(feats), ET.tostring(feats)
    success = rs.read_element()
    assert success.tag == q(NS_SASL, "success"), ET.tostring(success)

    body = unique("pipelined-")
    rs.restart()
    rs.send(STREAM_HEADER  # one write
            + f"<iq type='set' id='pb'><bind xmlns='{NS_BIND}'><resource>pipe</resource></bind></iq>"
            + "<presence/>"
            + f"<message to='{bob.boundjid.full}' type='chat' id='pm'><body>{body}</body></message>"
            + f"<iq type='get' id='pp' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")
    feats = rs.read_element()
    assert feats.tag == q(NS_STREAM, "features"), ET.tostring(feats)
    assert feats.find(q(NS_BIND, "bind")) is not None, ET.tostring(feats)
    iqs = []
    while len(iqs) < 2:
        elem = rs.read_element()
        assert elem.tag != q(NS_STREAM, "error"), ET.tostring(elem)
        if elem.tag == q(NS_CLIENT, "iq"):
            iqs.append(elem)
    bind_res, ping_res = iqs
    assert bind_res.get("id") == "pb" and bind_res.get("type") == "result", ET.tostring(bind_res)
    full = f"{a}@{DOMAIN}/pipe"
    assert bind_res.findtext(f"{q(NS_BIND, 'bind')}/{q(NS_BIND, 'jid')}") == full
    assert ping_res.get("id") == "pp" and ping_res.get("type") == "result", ET.tostring(ping_res)

    msg = await bob.wait_for(is_message_with_body(body, "chat"), "the pipelined message")
    assert msg.xml.get("from") == full, msg


@pytest.mark.parametrize("xml_declaration", [True, False], ids=["with-xml-declaration", "bare-header"])
def test_stream_restart_after_bind_is_a_stream_error(raw, make_account, xml_declaration):
    user, pw = make_account("restart")
    rs = raw()
    rs.login(user, pw, "r")
    header = STREAM_HEADER if xml_declaration else STREAM_HEADER[STREAM_HEADER.index("?>") + 2:]
    rs.send(header)
    rs.read_until_eof(timeout=5)
    err = rs.stream_error()
    assert err is not None, f"no stream error after a stream restart; {rs.describe()}"
    assert stream_error_condition(err), ET.tostring(err)
    assert rs.stream_ended, f"stream error not followed by </stream:stream>; {rs.describe()}"
    assert rs.eof, "connection still open"


async def test_spoofed_from_is_replaced_by_the_real_jid(raw, make_account, xmpp):
    """RFC 6120 8.1.2.1: the server stamps the sender's full JID on every
    stanza, whatever 'from' the client wrote."""
    (a, pa), (b, pb), (m, pm) = make_account("spa"), make_account("spb"), make_account("spm")
    bob = await xmpp(b, pb, "phone")
    victim = await xmpp(m, pm, "home")
    bob.send_presence()
    await bob.sync()

    rs = raw()
    alice = rs.login(a, pa, "wire")
    body = unique("spoof-")
    rs.send(f"<message from='{victim.boundjid.full}' to='{bob.boundjid.full}' type='chat'>"
            f"<body>{body}</body></message>")
    msg = await bob.wait_for(is_message_with_body(body, "chat"), "the message with a forged from")
    assert msg.xml.get("from") == alice, f"delivered with a forged 'from': {msg}"

    # An IQ with a forged 'from': the answer comes back to the real sender.
    mark = victim.mark()
    rs.send(f"<iq type='get' id='sp1' from='{victim.boundjid.full}' to='{DOMAIN}'>"
            f"<ping xmlns='urn:xmpp:ping'/></iq>")
    res = rs.read_until(lambda e: e.get("id") == "sp1")
    assert res.get("type") == "result", ET.tostring(res)
    assert res.get("to") in (alice, None), ET.tostring(res)
    await victim.assert_none(lambda st: st.xml.get("id") == "sp1",
                             "the answer to a ping forged in its name", since=mark)


def test_iq_payload_errors(raw, make_account):
    """RFC 6120 8.2.3 / 8.4: an unknown payload namespace is
    service-unavailable; an IQ get/set must have exactly one payload."""
    user, pw = make_account("iqerr")
    rs = raw()
    rs.login(user, pw, "r")
    unknown = f"<query xmlns='urn:example:{unique('nope')}'/>"

    for iq_type, to in (("get", DOMAIN), ("set", None)):
        res = rs.iq(iq_type, unknown, to=to)
        assert res.get("type") == "error", f"unknown namespace answered: {ET.tostring(res)!r}"
        assert stanza_error(res) == ("cancel", "service-unavailable"), ET.tostring(res)

    two = f"<ping xmlns='urn:xmpp:ping'/><query xmlns='{NS_DISCO_INFO}'/>"
    res = rs.iq("get", two, to=DOMAIN)
    assert res.get("type") == "error", f"IQ with two payloads answered: {ET.tostring(res)!r}"
    assert stanza_error(res) == ("modify", "bad-request"), ET.tostring(res)

    # Stanza errors do not end the stream.
    res = rs.iq("get", "<ping xmlns='urn:xmpp:ping'/>", to=DOMAIN)
    assert res.get("type") == "result", ET.tostring(res)
