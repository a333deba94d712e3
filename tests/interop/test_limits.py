"""Per-session rate limits against the ways around them (case variants and
resources of one destination, stanza types without a limit of their own),
XEP-0359 stanza ids a client forges in the server's name, and the characters a
resourcepart may hold."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET

import pytest

from xmpp_helpers import (
    metric,
    DOMAIN,
    NS_BIND,
    NS_CLIENT,
    NS_SASL,
    NS_SID,
    NS_STANZAS_ERR,
    is_groupchat,
    is_message_with_body,
    owner_and_member_in,
    q,
    stanza_error,
    stanza_ids,
    stanza_kind,
    unique,
)

# The defaults (config/waddle.toml): messages per destination, the general budget.
MESSAGES_PER_WINDOW = 10
STANZA_BUDGET = 300


def _case_variants(bare: str) -> list[str]:
    node, domain = bare.split("@")
    return [bare, bare.upper(), f"{node.capitalize()}@{domain.capitalize()}"]


async def _settle(client, pred, quiet: float = 1.5, limit: float = 20.0) -> int:
    """How many recorded stanzas match ``pred`` once nothing new has matched for
    ``quiet`` seconds (at most ``limit`` seconds in all)."""
    deadline = time.monotonic() + limit
    count, last_change = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = sum(1 for st in client.received if pred(st))
        if now != count:
            count, last_change = now, time.monotonic()
        elif time.monotonic() - last_change >= quiet:
            break
        await asyncio.sleep(0.1)
    return count


def _raw_replies(rs, pred, quiet: float = 1.5, limit: float = 20.0) -> list[ET.Element]:
    """Elements the raw stream receives that match ``pred``, until ``quiet``
    seconds pass without any element (at most ``limit`` seconds)."""
    found = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        elem = rs.next_element(quiet)
        if elem is None:
            break
        if pred(elem):
            found.append(elem)
    return found


def _is_policy_violation(elem: ET.Element, tag: str) -> bool:
    err = elem.find(q(NS_CLIENT, "error"))
    return (elem.get("type") == "error" and (elem.get("id") or "").startswith(tag)
            and err is not None and err.find(q(NS_STANZAS_ERR, "policy-violation")) is not None)


# ---------------------------------------------------------------------------
# one bucket per normalized destination
# ---------------------------------------------------------------------------


async def test_case_variants_and_resources_of_a_user_share_one_bucket(raw, make_account, xmpp):
    (a, pa), (b, pb) = make_account("rlcase"), make_account("rlcase")
    bob = await xmpp(b, pb, "phone")
    bob.send_presence()
    await bob.sync()
    rs = raw()
    rs.login(a, pa, "wire")

    bare = f"{b}@{DOMAIN}"
    variants = _case_variants(bare) + [f"{bare}/phone", f"{bare.upper()}/elsewhere"]
    tag = unique("rlcase")
    for i in range(50):  # back to back: 10 per 10 s for one destination
        rs.send(f"<message to='{variants[i % len(variants)]}' type='chat' id='{tag}-{i}'>"
                f"<body>{tag}-{i}</body></message>")

    refused = _raw_replies(rs, lambda e: e.tag == q(NS_CLIENT, "message") and _is_policy_violation(e, tag))
    delivered = await _settle(bob, lambda st: stanza_kind(st) == "message"
                              and (st.xml.get("id") or "").startswith(tag) and st.xml.get("type") == "chat")
    # One token comes back per second while the burst is handled.
    assert MESSAGES_PER_WINDOW <= delivered <= MESSAGES_PER_WINDOW + 2, delivered
    assert len(refused) == 50 - delivered, (len(refused), delivered)


async def test_case_variants_and_occupants_of_a_room_share_one_bucket(http, make_user, xmpp):
    pair = await owner_and_member_in(http, make_user, xmpp, "general")
    room, a, b = pair.room, pair.a, pair.b
    before = metric(http, "xmpp_rate_limited_total", 'limit="message"')
    tag = unique("rlroom")
    bare_variants = _case_variants(room)
    # Private messages to occupants go to the room too, and count against its bucket.
    full_variants = [f"{room}/alice", f"{room.upper()}/alice"]
    for i in range(30):
        if i % 5 < 3:
            to, mtype = bare_variants[i % 5], "groupchat"
        else:
            to, mtype = full_variants[i % 5 - 3], "chat"
        b.send_raw(f"<message xmlns='jabber:client' to='{to}' type='{mtype}' id='{tag}-{i}'>"
                   f"<body>{tag}-{i}</body></message>")

    def refused(st) -> bool:
        return (stanza_kind(st) == "message" and st.xml.get("type") == "error"
                and (st.xml.get("id") or "").startswith(tag)
                and stanza_error(st) == ("modify", "policy-violation"))

    n_refused = await _settle(b, refused)
    reached_room = await _settle(a, lambda st: stanza_kind(st) == "message"
                                 and (st.xml.get("id") or "").startswith(tag)
                                 and st.xml.get("type") != "error")
    assert MESSAGES_PER_WINDOW <= 30 - n_refused <= MESSAGES_PER_WINDOW + 2, n_refused
    assert 1 <= reached_room <= 30 - n_refused, (reached_room, n_refused)
    assert metric(http, "xmpp_rate_limited_total", 'limit="message"') >= before + n_refused


# ---------------------------------------------------------------------------
# the general budget: stanza types without a limit of their own
# ---------------------------------------------------------------------------

FLOODS = {
    "iq-result": lambda to, sid: f"<iq type='result' to='{to}' id='{sid}'/>",
    "iq-error": lambda to, sid: (
        f"<iq type='error' to='{to}' id='{sid}'><error type='cancel'>"
        f"<service-unavailable xmlns='{NS_STANZAS_ERR}'/></error></iq>"),
    "presence-error": lambda to, sid: (
        f"<presence type='error' to='{to}' id='{sid}'><error type='cancel'>"
        f"<service-unavailable xmlns='{NS_STANZAS_ERR}'/></error></presence>"),
    "directed-unavailable": lambda to, sid: f"<presence type='unavailable' to='{to}' id='{sid}'/>",
}


@pytest.mark.parametrize("kind", sorted(FLOODS))
async def test_floods_of_unlimited_types_hit_the_stanza_budget(raw, make_account, xmpp, http, kind):
    (a, pa), (b, pb) = make_account("flood"), make_account("flood")
    bob = await xmpp(b, pb, "phone")
    bob.send_presence()
    await bob.sync()
    rs = raw()
    rs.login(a, pa, "wire")
    before = metric(http, "xmpp_rate_limited_total", 'limit="stanza"')

    tag = unique(f"fl-{kind}")
    sent = 400
    rs.send("".join(FLOODS[kind](bob.boundjid.full, f"{tag}-{i}") for i in range(sent)))

    replies = _raw_replies(rs, lambda e: (e.get("id") or "").startswith(tag))
    delivered = await _settle(bob, lambda st: (st.xml.get("id") or "").startswith(tag))
    # Refilled at 30 a second while the flood is handled.
    assert STANZA_BUDGET - 10 <= delivered <= STANZA_BUDGET + 60, delivered
    after = metric(http, "xmpp_rate_limited_total", 'limit="stanza"')
    assert after - before >= sent - delivered, (before, after, delivered)
    errors = [e for e in replies if _is_policy_violation(e, tag)]
    if kind == "directed-unavailable":
        assert len(errors) == sent - delivered, (len(errors), delivered)
    else:
        # Errors are never answered with errors, nor IQ responses with IQ responses
        # (RFC 6120 §8.2.3, §8.3.1).
        assert not replies, [ET.tostring(e) for e in replies[:3]]


# ---------------------------------------------------------------------------
# XEP-0359: stanza ids only the server may assert
# ---------------------------------------------------------------------------


def _sid(by: str) -> str:
    return f"<stanza-id xmlns='{NS_SID}' id='forged' by='{by}'/>"


async def test_forged_stanza_ids_are_stripped_in_chat(raw, make_account, xmpp):
    (a, pa), (b, pb) = make_account("sidf"), make_account("sidf")
    bob = await xmpp(b, pb, "phone")
    bob.send_presence()
    await bob.sync()
    rs = raw()
    alice = rs.login(a, pa, "wire")
    alice_bare, bob_bare = alice.split("/")[0], f"{b}@{DOMAIN}"

    body = unique("sid-chat")
    forged = [DOMAIN, DOMAIN.upper(), alice_bare, bob_bare, bob_bare.upper(),
              f"room@muc.{DOMAIN}", "elsewhere.example"]
    rs.send(f"<message to='{bob_bare}' type='chat'><body>{body}</body>"
            + "".join(_sid(by) for by in forged) + "</message>")
    msg = await bob.wait_for(is_message_with_body(body, "chat"), "the message with forged stanza ids")
    ids = stanza_ids(msg)
    # Only the server's own id by the recipient, and the one by a domain not ours.
    assert set(ids) == {bob_bare, "elsewhere.example"}, ids
    assert ids[bob_bare] != "forged", ids


async def test_forged_stanza_ids_are_stripped_in_groupchat(http, make_user, xmpp):
    pair = await owner_and_member_in(http, make_user, xmpp, "general")
    room, a, b = pair.room, pair.a, pair.b
    body = unique("sid-room")
    forged = [DOMAIN, f"muc.{DOMAIN}", pair.bob.jid, pair.alice.jid, room, room.upper(),
              f"{room}/alice", "elsewhere.example"]
    a_mark = a.mark()
    b.send_raw(f"<message xmlns='jabber:client' to='{room}' type='groupchat'><body>{body}</body>"
               + "".join(_sid(by) for by in forged) + "</message>")
    msg = await a.wait_for(is_groupchat(room, body), "the reflection", since=a_mark)
    ids = stanza_ids(msg)
    assert set(ids) == {room, "elsewhere.example"}, ids
    assert ids[room] != "forged", ids


# ---------------------------------------------------------------------------
# resourceparts (RFC 7622 §3.4: PRECIS OpaqueString)
# ---------------------------------------------------------------------------


def _bind_raw(rs, user: str, password: str, resource: str) -> ET.Element:
    """Logs in and asks to bind ``resource``; the server's answer to the bind."""
    rs.open_stream()
    rs.starttls()
    assert rs.auth_plain(user, password).tag == q(NS_SASL, "success")
    rs.open_stream()
    rs.send(f"<iq type='set' id='bind1'><bind xmlns='{NS_BIND}'>"
            f"<resource>{resource}</resource></bind></iq>")
    return rs.read_until(lambda e: e.tag == q(NS_CLIENT, "iq") and e.get("id") == "bind1")


def test_resource_with_a_control_character_is_refused(raw, make_account):
    user, pw = make_account("resctl")
    res = _bind_raw(raw(), user, pw, "phone&#x7f;")
    assert res.get("type") == "error", ET.tostring(res)
    err = res.find(q(NS_CLIENT, "error"))
    assert err is not None and err.find(q(NS_STANZAS_ERR, "bad-request")) is not None, ET.tostring(res)


def test_resource_with_an_emoji_binds(raw, make_account):
    user, pw = make_account("resemoji")
    res = _bind_raw(raw(), user, pw, "phone\N{MOBILE PHONE}")
    assert res.get("type") == "result", ET.tostring(res)
    jid = res.find(f"{q(NS_BIND, 'bind')}/{q(NS_BIND, 'jid')}")
    assert jid is not None and jid.text == f"{user}@{DOMAIN}/phone\N{MOBILE PHONE}", ET.tostring(res)


def test_an_emoji_resource_is_reachable(raw, make_account):
    """RFC 7622 resourceparts (PRECIS OpaqueString) work end to end: bound, stamped as
    `from`, and routed to as `to`."""
    (a, pa), (b, pb) = make_account("emojia"), make_account("emojib")
    ra, rb = raw(), raw()
    a_full = f"{a}@{DOMAIN}/\N{PENGUIN}"
    assert _bind_raw(ra, a, pa, "\N{PENGUIN}").get("type") == "result"
    b_full = rb.login(b, pb, "desk")
    body = unique("emoji-")
    rb.send(f"<message to='{a_full}' type='chat'><body>{body}</body></message>")
    got = ra.read_until(lambda e: e.tag == q(NS_CLIENT, "message"))
    assert got.get("from") == b_full and got.get("to") == a_full, ET.tostring(got)
    ra.send(f"<message to='{b_full}' type='chat'><body>{body}-back</body></message>")
    back = rb.read_until(lambda e: e.tag == q(NS_CLIENT, "message"))
    assert back.get("from") == a_full, ET.tostring(back)
