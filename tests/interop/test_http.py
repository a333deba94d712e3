"""HTTP API: health, accounts, sessions, XMPP tokens and the JSON error
envelope ``{"error": {"code": ..., "message": ...}}``."""

from __future__ import annotations

from xmpp_helpers import DOMAIN, assert_error_envelope, fresh_source_ip, unique

# Requests expected to fail authentication use their own loopback source
# address: the server rate-limits auth failures per client address.


def test_health(http):
    status, _body = http("GET", "/health")
    assert status == 200


def test_create_account_and_duplicate(http):
    user, pw = unique("acct"), "Pw" + unique("")
    status, body = http("POST", "/v1/accounts", json={"username": user, "password": pw})
    assert status == 201, (status, body)
    assert body == {"username": user, "jid": f"{user}@{DOMAIN}"} or (
        body["username"] == user and body["jid"] == f"{user}@{DOMAIN}"), body
    assert pw not in str(body), "password echoed back"

    status, body = http("POST", "/v1/accounts",
                        json={"username": user, "password": "AnotherPassw0rd"})
    assert 400 <= status < 500, f"duplicate account accepted: {status} {body!r}"
    assert_error_envelope(body)


def test_session_login(http, make_account):
    user, pw = make_account("sess")
    status, body = http("POST", "/auth/session", json={"username": user, "password": pw})
    assert status in (200, 201), (status, body)
    assert isinstance(body.get("token"), str) and body["token"], body


def test_session_wrong_password_is_401(http, make_account):
    user, pw = make_account("sessbad")
    status, body = http("POST", "/auth/session", json={"username": user, "password": pw + "!"},
                        source_ip=fresh_source_ip())
    assert status == 401, (status, body)
    assert_error_envelope(body)
    assert "token" not in body

    status, body2 = http("POST", "/auth/session",
                         json={"username": unique("nosuch"), "password": "NoSuchPassw0rd"},
                         source_ip=fresh_source_ip())
    assert status == 401, (status, body2)
    assert_error_envelope(body2)
    # no user enumeration through the error code
    assert body2["error"]["code"] == body["error"]["code"], (body, body2)


def test_xmpp_token_requires_bearer(http):
    status, body = http("POST", "/auth/xmpp-token", source_ip=fresh_source_ip())
    assert status == 401, (status, body)
    assert_error_envelope(body)


def test_xmpp_token_rejects_bad_credentials(http, make_account):
    status, body = http("POST", "/auth/xmpp-token", bearer="not-a-real-token",
                        source_ip=fresh_source_ip())
    assert status == 401, (status, body)
    assert_error_envelope(body)

    status, body = http("POST", "/auth/xmpp-token", headers={"Authorization": "Basic Zm9vOmJhcg=="},
                        source_ip=fresh_source_ip())
    assert status == 401, (status, body)
    assert_error_envelope(body)

    # a password is not a bearer token
    user, pw = make_account("bearpw")
    status, body = http("POST", "/auth/xmpp-token", bearer=pw, source_ip=fresh_source_ip())
    assert status == 401, (status, body)
    assert_error_envelope(body)


def test_xmpp_token_is_scoped_to_session_user(http, make_account):
    (a, pa), (b, pb) = make_account("scopea"), make_account("scopeb")
    _, sa = http("POST", "/auth/session", json={"username": a, "password": pa})
    _, sb = http("POST", "/auth/session", json={"username": b, "password": pb})
    _, ta = http("POST", "/auth/xmpp-token", bearer=sa["token"])
    _, tb = http("POST", "/auth/xmpp-token", bearer=sb["token"])
    assert ta["jid"] == f"{a}@{DOMAIN}"
    assert tb["jid"] == f"{b}@{DOMAIN}"
    assert ta["token"] != tb["token"]


async def test_xmpp_token_of_one_user_does_not_log_in_another(xmpp, http, make_account):
    (a, pa), (b, _) = make_account("crossa"), make_account("crossb")
    _, sa = http("POST", "/auth/session", json={"username": a, "password": pa})
    _, ta = http("POST", "/auth/xmpp-token", bearer=sa["token"])
    c = await xmpp(b, ta["token"], "r", sasl_mech="PLAIN", expect_session=False,
                   source_ip=fresh_source_ip())
    assert not c.session_started.is_set(), "alice's XMPP token logged in as bob"
    assert c.auth_failures == ["not-authorized"], c.auth_failures
