"""Connection, SASL, resource binding and session-conflict behaviour, driven
through slixmpp (a real XMPP client library)."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET

from xmpp_helpers import (
    DOMAIN,
    NS_REGISTER,
    NS_SASL,
    TIMEOUT,
    XmppClient,
    assert_server_healthy,
    connect_client,
    fresh_source_ip,
    is_message_with_body,
    is_stream_error,
    q,
    stream_error_condition,
    unique,
)


def used_mech(client: XmppClient) -> str:
    return client.plugin["feature_mechanisms"].mech.name


async def test_starttls_scram_sha256_login_and_bind(xmpp, make_account):
    user, pw = make_account("scram")
    c = await xmpp(user, pw, "laptop", sasl_mech="SCRAM-SHA-256")
    assert used_mech(c) == "SCRAM-SHA-256"
    # client-chosen resource honoured, full JID as bound by the server
    assert c.boundjid.full == f"{user}@{DOMAIN}/laptop"
    assert c.boundjid.bare == f"{user}@{DOMAIN}"
    await c.sync()


async def test_default_mechanism_choice_is_scram(xmpp, make_account):
    """Without restrictions slixmpp picks the strongest offered mechanism it
    can use; that must be a SCRAM variant, not PLAIN."""
    user, pw = make_account("deflt")
    c = await xmpp(user, pw, "r1")
    assert used_mech(c).startswith("SCRAM-SHA-"), used_mech(c)
    assert c.boundjid.full == f"{user}@{DOMAIN}/r1"


async def test_server_generated_resource(xmpp, make_account):
    user, pw = make_account("genres")
    c = await xmpp(user, pw, None)
    assert c.boundjid.bare == f"{user}@{DOMAIN}"
    assert c.boundjid.resource, f"server did not assign a resource: {c.boundjid}"


async def test_starttls_scram_sha1_login(xmpp, make_account):
    user, pw = make_account("sha1")
    c = await xmpp(user, pw, "old", sasl_mech="SCRAM-SHA-1")
    assert used_mech(c) == "SCRAM-SHA-1"
    assert c.boundjid.full == f"{user}@{DOMAIN}/old"


async def test_direct_tls_login(xmpp, make_account):
    user, pw = make_account("dtls")
    c = await xmpp(user, pw, "direct", direct_tls=True)
    assert c.boundjid.full == f"{user}@{DOMAIN}/direct"
    await c.sync()


async def test_direct_tls_client_can_chat_with_starttls_client(xmpp, make_account):
    (a, pa), (b, pb) = make_account("dta"), make_account("dtb")
    alice = await xmpp(a, pa, "tls", direct_tls=True)
    bob = await xmpp(b, pb, "starttls")
    body = unique("hello-")
    alice.send_message(mto=bob.boundjid.full, mbody=body, mtype="chat")
    msg = await bob.wait_for(is_message_with_body(body, "chat"), "chat over direct TLS")
    assert msg.xml.get("from") == alice.boundjid.full


async def test_plain_login_with_http_xmpp_token(xmpp, make_account, http, server):
    user, pw = make_account("tok")
    status, body = http("POST", "/auth/session", json={"username": user, "password": pw})
    assert status == 200 or status == 201, (status, body)
    session_token = body["token"]
    assert isinstance(session_token, str) and session_token

    status, tok = http("POST", "/auth/xmpp-token", bearer=session_token)
    assert status in (200, 201), (status, tok)
    for key in ("jid", "token", "expires_at", "xmpp_host", "xmpp_port", "websocket_url"):
        assert key in tok, f"xmpp-token response lacks {key!r}: {tok!r}"
    assert tok["jid"] == f"{user}@{DOMAIN}"
    assert isinstance(tok["token"], str) and tok["token"]
    assert tok["token"] != pw
    assert tok["xmpp_host"] == DOMAIN, tok
    assert tok["xmpp_port"] == server.starttls_port, tok
    assert isinstance(tok["websocket_url"], str) and tok["websocket_url"], tok

    c = await xmpp(user, tok["token"], "web", sasl_mech="PLAIN")
    assert used_mech(c) == "PLAIN"
    assert c.boundjid.full == f"{user}@{DOMAIN}/web"
    await c.sync()


async def test_plain_login_with_password(xmpp, make_account):
    user, pw = make_account("plain")
    c = await xmpp(user, pw, "p", sasl_mech="PLAIN")
    assert used_mech(c) == "PLAIN"
    assert c.boundjid.full == f"{user}@{DOMAIN}/p"


async def test_wrong_password_fails_and_server_stays_up(xmpp, make_account):
    user, pw = make_account("wrong")
    # Failing logins come from their own loopback addresses: the server
    # rate-limits failures per client address.
    bad = await xmpp(user, pw + "x", "r", sasl_mech="SCRAM-SHA-256", expect_session=False,
                     source_ip=fresh_source_ip())
    assert not bad.session_started.is_set(), "logged in with a wrong password"
    assert bad.auth_failures, "no SASL <failure/> received for a wrong password"
    assert bad.auth_failures[0] == "not-authorized", bad.auth_failures

    # Same mistake with PLAIN.
    bad2 = await xmpp(user, "nope", "r", sasl_mech="PLAIN", expect_session=False,
                      source_ip=fresh_source_ip())
    assert not bad2.session_started.is_set()
    assert bad2.auth_failures and bad2.auth_failures[0] == "not-authorized", bad2.auth_failures

    # Unknown user: same answer, no user enumeration.
    ghost = await xmpp(unique("ghost"), "whatever", "r", sasl_mech="SCRAM-SHA-256",
                       expect_session=False, source_ip=fresh_source_ip())
    assert not ghost.session_started.is_set()
    assert ghost.auth_failures and ghost.auth_failures[0] == "not-authorized", \
        ghost.auth_failures

    # The right password still works, and so does everybody else.
    good = await xmpp(user, pw, "r")
    assert good.boundjid.full == f"{user}@{DOMAIN}/r"
    await assert_server_healthy(xmpp, make_account)


async def test_resource_conflict_kicks_old_session(xmpp, make_account):
    user, pw = make_account("dup")
    first = await xmpp(user, pw, "same")
    assert first.boundjid.full == f"{user}@{DOMAIN}/same"

    second = await xmpp(user, pw, "same")
    assert second.boundjid.full == f"{user}@{DOMAIN}/same"

    err = await first.wait_for(is_stream_error, "a stream error on the old session")
    assert stream_error_condition(err.xml) == "conflict", err
    await first.wait_disconnected()

    # The new session is fully usable: server answers it and it gets messages.
    await second.sync()
    (o, po) = make_account("dupo")
    other = await xmpp(o, po, "x")
    body = unique("to-new-")
    other.send_message(mto=f"{user}@{DOMAIN}/same", mbody=body, mtype="chat")
    await second.wait_for(is_message_with_body(body), "message to the new session")


async def test_inband_registration_then_login(server, xmpp):
    """XEP-0077 over a fresh connection after STARTTLS and before SASL, using
    slixmpp's xep_0077 plugin; the same connection then authenticates with
    the new account, and a second connection logs in again."""
    user, pw = unique("ibr"), "Pw" + unique("")
    jid = f"{user}@{DOMAIN}/reg"
    c = XmppClient(jid, pw, inband_register=True)
    xmpp.track(c)
    registered: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_register(form):
        if form["type"] != "result" and not registered.done():
            registered.set_exception(AssertionError(f"registration form request failed: {form}"))
        resp = c.Iq(stype="set")
        resp["register"]["username"] = user
        resp["register"]["password"] = pw
        try:
            result = await resp.send(timeout=TIMEOUT)
        except Exception as exc:  # IqError / IqTimeout
            if not registered.done():
                registered.set_exception(AssertionError(f"registration failed: {exc!r}"))
            c.disconnect(wait=0.2)
            return
        if not registered.done():
            registered.set_result(result)

    c.add_event_handler("register", on_register)
    await connect_client(server, jid, pw, client=c)
    result = await asyncio.wait_for(registered, TIMEOUT)
    assert result["type"] == "result"
    assert c.boundjid.full == jid

    again = await xmpp(user, pw, "again")
    assert again.boundjid.full == f"{user}@{DOMAIN}/again"


def test_account_removal_closes_stream_and_forbids_login(raw, make_account):
    """XEP-0077 3.2: an authenticated user cancels its registration with
    <remove/>: the server answers with a result, closes the stream, and the
    credentials no longer work."""
    user, pw = make_account("gone")
    rs = raw()
    rs.login(user, pw, "r")
    res = rs.iq("set", f"<query xmlns='{NS_REGISTER}'><remove/></query>")
    assert res.get("type") == "result", f"account removal refused: {ET.tostring(res)!r}"

    rs.read_until_eof()
    assert rs.stream_ended, f"no </stream:stream> after the account was removed; {rs.describe()}"
    assert rs.eof, "connection still open after the account was removed"
    err = rs.stream_error()
    if err is not None:
        assert stream_error_condition(err) in ("not-authorized", "conflict", "reset"), \
            ET.tostring(err)

    again = raw(fresh_source_ip())
    again.open_stream()
    again.starttls()
    result = again.auth_plain(user, pw)
    assert result.tag == q(NS_SASL, "failure"), \
        f"removed account can still log in: {ET.tostring(result)!r}"
    assert result.find(q(NS_SASL, "not-authorized")) is not None, ET.tostring(result)
