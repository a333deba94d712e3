"""RFC 6121 instant messaging and presence plus a few XEPs (disco, ping,
offline storage), checked with slixmpp clients against the real server."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

from xmpp_helpers import (
    DOMAIN,
    NS_CLIENT,
    NS_DELAY,
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    NS_ROSTER,
    NS_VCARD,
    XmppClient,
    is_message_with_body,
    is_presence,
    is_roster_push,
    q,
    stanza_error,
    stanza_kind,
    subscribe_and_approve,
    unique,
)


def roster_set_iq(client: XmppClient, jid: str, name: str | None = None,
                  groups: tuple[str, ...] = (), subscription: str | None = None):
    """<iq type='set'><query xmlns='jabber:iq:roster'><item .../></query></iq>"""
    item: dict = {}
    if name:
        item["name"] = name
    if groups:
        item["groups"] = list(groups)
    if subscription:
        item["subscription"] = subscription
    iq = client.Iq(stype="set")
    iq["roster"]["items"] = {jid: item}
    return iq


def ping_iq(client: XmppClient, to: str):
    iq = client.Iq(stype="get", sto=to)
    iq.enable("ping")
    return iq


def groups_of(item) -> set[str]:
    return {g.text or "" for g in item.findall(q(NS_ROSTER, "group"))}


# ---------------------------------------------------------------------------
# roster
# ---------------------------------------------------------------------------


async def test_roster_add_push_get_remove(xmpp, make_account):
    user, pw = make_account("ros")
    c = await xmpp(user, pw, "r")
    contact = f"{unique('carol')}@{DOMAIN}"

    mark = c.mark()
    res = await c.iq(roster_set_iq(c, contact, name="Carol", groups=("Friends", "Work")))
    assert res["type"] == "result"
    push = await c.wait_for(is_roster_push(contact), "roster push after add", since=mark)
    assert push.xml.get("to") in (c.boundjid.full, None), push
    assert push.xml.get("from") in (None, c.boundjid.bare), push
    item = next(it for it in push.xml.iter(q(NS_ROSTER, "item")) if it.get("jid") == contact)
    assert item.get("name") == "Carol"
    assert groups_of(item) == {"Friends", "Work"}
    assert item.get("subscription", "none") == "none"

    items = await c.roster_items()
    assert contact in items, f"roster get lacks {contact}: {list(items)}"
    assert items[contact].get("name") == "Carol"
    assert groups_of(items[contact]) == {"Friends", "Work"}
    assert items[contact].get("subscription", "none") == "none"

    # update: rename + regroup
    mark = c.mark()
    await c.iq(roster_set_iq(c, contact, name="Caroline", groups=("Family",)))
    push = await c.wait_for(is_roster_push(contact), "roster push after update", since=mark)
    item = next(push.xml.iter(q(NS_ROSTER, "item")))
    assert item.get("name") == "Caroline" and groups_of(item) == {"Family"}

    # remove
    mark = c.mark()
    res = await c.iq(roster_set_iq(c, contact, subscription="remove"))
    assert res["type"] == "result"
    await c.wait_for(is_roster_push(contact, "remove"), "roster push subscription='remove'",
                     since=mark)
    items = await c.roster_items()
    assert contact not in items, f"removed item still in roster: {list(items)}"


async def test_roster_push_reaches_other_resources(xmpp, make_account):
    user, pw = make_account("rosmulti")
    r1 = await xmpp(user, pw, "one")
    r2 = await xmpp(user, pw, "two")
    # RFC 6121 2.1.6: pushes go to interested resources (those that asked for
    # the roster); request it on both.
    await r1.roster_items()
    await r2.roster_items()
    contact = f"{unique('dave')}@{DOMAIN}"
    mark = r2.mark()
    await r1.iq(roster_set_iq(r1, contact, name="Dave"))
    await r2.wait_for(is_roster_push(contact), "roster push on the other resource", since=mark)


# ---------------------------------------------------------------------------
# subscriptions and presence
# ---------------------------------------------------------------------------


async def test_subscription_handshake(xmpp, make_account):
    (a, pa), (b, pb) = make_account("suba"), make_account("subb")
    alice = await xmpp(a, pa, "pc")
    bob = await xmpp(b, pb, "phone")
    alice.send_presence()
    bob.send_presence()
    await alice.sync()
    await bob.sync()

    await subscribe_and_approve(alice, bob)

    a_items = await alice.roster_items()
    assert bob.boundjid.bare in a_items, list(a_items)
    assert a_items[bob.boundjid.bare].get("subscription") == "to"
    assert a_items[bob.boundjid.bare].get("ask") is None
    b_items = await bob.roster_items()
    assert alice.boundjid.bare in b_items, list(b_items)
    assert b_items[alice.boundjid.bare].get("subscription") == "from"


async def test_presence_broadcast_probe_and_unavailable(xmpp, make_account):
    (a, pa), (b, pb) = make_account("prea"), make_account("preb")
    alice = await xmpp(a, pa, "pc")
    bob = await xmpp(b, pb, "phone")
    alice.send_presence()
    bob.send_presence()
    await alice.sync()
    await bob.sync()
    await subscribe_and_approve(alice, bob)

    # broadcast of an updated presence to subscribers
    status = unique("lunch-")
    mark = alice.mark()
    bob.send_presence(pshow="away", pstatus=status)
    pres = await alice.wait_for(is_presence(bob.boundjid.full, None, status),
                                "bob's broadcast presence", since=mark)
    show = pres.xml.find(q(NS_CLIENT, "show"))
    assert show is not None and show.text == "away", pres

    # alice logs in again: the server probes bob on her behalf (RFC 6121 4.3)
    await alice.close()
    alice2 = await xmpp(a, pa, "tablet")
    alice2.send_presence()
    pres = await alice2.wait_for(is_presence(bob.boundjid.full, None, status),
                                 "bob's presence via probe after login")
    assert pres.xml.get("to") in (alice2.boundjid.full, None), pres

    # bob goes away entirely -> alice gets unavailable from his full JID
    mark = alice2.mark()
    bob_full = bob.boundjid.full
    await bob.close()
    await alice2.wait_for(is_presence(bob_full, "unavailable"),
                          "unavailable presence after bob disconnects", since=mark)


async def test_no_presence_leak_without_subscription(xmpp, make_account):
    (a, pa), (b, pb) = make_account("leaka"), make_account("leakb")
    alice = await xmpp(a, pa, "x")
    bob = await xmpp(b, pb, "y")
    alice.send_presence()
    await alice.sync()
    status = unique("secret-")
    bob.send_presence(pstatus=status)
    await bob.sync()
    await alice.assert_none(is_presence(bob.boundjid.bare, None, status),
                            "presence from an unsubscribed contact")


# ---------------------------------------------------------------------------
# messaging
# ---------------------------------------------------------------------------


async def test_chat_to_full_jid(xmpp, make_account):
    (a, pa), (b, pb) = make_account("fja"), make_account("fjb")
    alice = await xmpp(a, pa, "pc")
    bob1 = await xmpp(b, pb, "one")
    bob2 = await xmpp(b, pb, "two")
    for c, prio in ((alice, 0), (bob1, 1), (bob2, 5)):
        c.send_presence(ppriority=prio)
        await c.sync()

    body = unique("full-")
    m1, m2 = bob1.mark(), bob2.mark()
    alice.send_message(mto=bob1.boundjid.full, mbody=body, mtype="chat")
    msg = await bob1.wait_for(is_message_with_body(body, "chat"), "chat to full JID", since=m1)
    assert msg.xml.get("from") == alice.boundjid.full
    assert msg.xml.get("to") == bob1.boundjid.full
    # addressed to resource 'one' only, even though 'two' has higher priority
    await bob2.assert_none(is_message_with_body(body), "message addressed to the other resource",
                           since=m2)


async def test_chat_to_bare_jid_goes_to_highest_priority(xmpp, make_account):
    (a, pa), (b, pb) = make_account("bja"), make_account("bjb")
    alice = await xmpp(a, pa, "pc")
    low = await xmpp(b, pb, "low")
    high = await xmpp(b, pb, "high")
    low.send_presence(ppriority=1)
    high.send_presence(ppriority=5)
    await low.sync()
    await high.sync()

    body = unique("bare-")
    ml, mh = low.mark(), high.mark()
    alice.send_message(mto=f"{b}@{DOMAIN}", mbody=body, mtype="chat")
    msg = await high.wait_for(is_message_with_body(body, "chat"),
                              "bare-JID chat on the priority-5 resource", since=mh)
    assert msg.xml.get("from") == alice.boundjid.full
    await low.assert_none(is_message_with_body(body), "bare-JID chat on the priority-1 resource",
                          since=ml)

    # swap priorities: now 'low' is the best resource
    low.send_presence(ppriority=10)
    await low.sync()
    body2 = unique("bare2-")
    ml, mh = low.mark(), high.mark()
    alice.send_message(mto=f"{b}@{DOMAIN}", mbody=body2, mtype="chat")
    await low.wait_for(is_message_with_body(body2, "chat"),
                       "bare-JID chat after priority change", since=ml)
    await high.assert_none(is_message_with_body(body2), "chat on the now lower resource",
                           since=mh)


async def test_offline_message_delivery_with_delay(xmpp, make_account):
    (a, pa), (b, pb) = make_account("offa"), make_account("offb")
    alice = await xmpp(a, pa, "pc")
    body = unique("while-you-were-out-")
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    mark = alice.mark()
    alice.send_message(mto=f"{b}@{DOMAIN}", mbody=body, mtype="chat")
    await alice.sync()  # stored before bob shows up
    await alice.assert_none(lambda st: stanza_kind(st) == "message"
                            and st.xml.get("type") == "error",
                            "an error for a message to an offline user", wait=0.2, since=mark)

    bob = await xmpp(b, pb, "later")
    bob.send_presence()  # XEP-0160: delivery on initial presence
    msg = await bob.wait_for(is_message_with_body(body), "offline message")
    assert (msg.xml.get("from") or "").split("/")[0] == alice.boundjid.bare, msg
    delay = msg.xml.find(q(NS_DELAY, "delay"))
    assert delay is not None, f"offline message without XEP-0203 <delay/>: {msg}"
    stamp = delay.get("stamp")
    assert stamp, f"<delay/> without stamp: {msg}"
    parsed = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, f"delay stamp must be UTC with zone: {stamp}"
    assert before <= parsed <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5), stamp

    # delivered once: a second login does not get it again
    await bob.close()
    bob2 = await xmpp(b, pb, "again")
    bob2.send_presence()
    await bob2.sync()
    await bob2.assert_none(is_message_with_body(body), "offline message delivered twice")


async def test_message_to_nonexistent_user_bounces(xmpp, make_account):
    user, pw = make_account("bounce")
    c = await xmpp(user, pw, "r")
    ghost = f"{unique('nobody')}@{DOMAIN}"
    body = unique("anyone-")
    c.send_message(mto=ghost, mbody=body, mtype="chat")
    err = await c.wait_for(lambda st: stanza_kind(st) == "message"
                           and st.xml.get("type") == "error"
                           and (st.xml.get("from") or "").split("/")[0] == ghost,
                           "message error from the nonexistent user")
    etype, cond = stanza_error(err)
    assert (etype, cond) == ("cancel", "service-unavailable"), err


async def test_iq_to_nonexistent_user_bounces(xmpp, make_account):
    user, pw = make_account("iqbounce")
    c = await xmpp(user, pw, "r")
    ghost = f"{unique('nobody')}@{DOMAIN}"
    iq = c.Iq(stype="get", sto=ghost)
    iq.enable("disco_info")
    try:
        res = await iq.send(timeout=10)
    except Exception as exc:  # IqError carries the error stanza
        res = getattr(exc, "iq", None)
        assert res is not None, f"no error reply: {exc!r}"
    assert res["type"] == "error", f"iq to nonexistent user answered: {res}"
    assert stanza_error(res)[1] == "service-unavailable", res


# ---------------------------------------------------------------------------
# disco and ping
# ---------------------------------------------------------------------------


async def test_disco_info_and_items_on_server(xmpp, make_account):
    user, pw = make_account("disco")
    c = await xmpp(user, pw, "r")
    iq = c.Iq(stype="get", sto=DOMAIN)
    iq.enable("disco_info")
    res = await c.iq(iq)
    assert res["type"] == "result"
    assert res.xml.get("from") == DOMAIN
    query = res.xml.find(q(NS_DISCO_INFO, "query"))
    assert query is not None, res
    identities = {(i.get("category"), i.get("type")) for i in query.findall(q(NS_DISCO_INFO,
                                                                               "identity"))}
    assert ("server", "im") in identities, identities
    features = {f.get("var") for f in query.findall(q(NS_DISCO_INFO, "feature"))}
    for feature in ("http://jabber.org/protocol/disco#info", "urn:xmpp:ping", "jabber:iq:roster"):
        assert feature in features, f"missing disco feature {feature}: {sorted(features)}"

    iq = c.Iq(stype="get", sto=DOMAIN)
    iq.enable("disco_items")
    res = await c.iq(iq)
    assert res["type"] == "result"
    assert res.xml.find(q(NS_DISCO_ITEMS, "query")) is not None, res


async def test_disco_info_via_slixmpp_api(xmpp, make_account):
    user, pw = make_account("disco2")
    c = await xmpp(user, pw, "r")
    info = await c.plugin["xep_0030"].get_info(jid=DOMAIN, local=False, cached=False, timeout=10)
    assert "urn:xmpp:ping" in info["disco_info"]["features"]


async def test_ping_server(xmpp, make_account):
    user, pw = make_account("ping")
    c = await xmpp(user, pw, "r")
    res = await c.iq(ping_iq(c, DOMAIN))  # fails on error/timeout
    assert res["type"] == "result"
    assert res.xml.get("from") in (DOMAIN, None)


async def test_iq_routed_to_other_client_full_jid(xmpp, make_account):
    """alice pings bob's full JID; bob's slixmpp answers (XEP-0199); the
    server routes both the request and the result."""
    (a, pa), (b, pb) = make_account("ipa"), make_account("ipb")
    alice = await xmpp(a, pa, "pc")
    bob = await xmpp(b, pb, "phone")
    bob.send_presence()
    await bob.sync()
    mark = bob.mark()
    res = await alice.iq(ping_iq(alice, bob.boundjid.full))
    assert res["type"] == "result"
    assert res.xml.get("from") == bob.boundjid.full
    req = await bob.wait_for(lambda st: stanza_kind(st) == "iq" and st.xml.get("type") == "get",
                             "the routed ping", since=mark)
    assert req.xml.get("from") == alice.boundjid.full


async def test_message_without_to_goes_to_own_bare_jid(xmpp, make_account):
    """RFC 6120 10.3.1: a message with no 'to' is handled as if addressed to
    the sender's bare JID, so it reaches the user's highest-priority
    resource."""
    user, pw = make_account("noto")
    low = await xmpp(user, pw, "low")
    high = await xmpp(user, pw, "high")
    low.send_presence(ppriority=1)
    high.send_presence(ppriority=5)
    await low.sync()
    await high.sync()

    body = unique("note-to-self-")
    ml, mh = low.mark(), high.mark()
    msg = low.Message()
    msg["type"] = "chat"
    msg["body"] = body
    assert msg.xml.get("to") is None
    msg.send()
    got = await high.wait_for(is_message_with_body(body, "chat"),
                              "message without 'to' on the priority-5 resource", since=mh)
    assert got.xml.get("from") == low.boundjid.full, got
    assert got.xml.get("to") in (low.boundjid.bare, high.boundjid.full), got
    await low.assert_none(is_message_with_body(body), "message without 'to' on the sender "
                          "(lower priority)", since=ml)


# ---------------------------------------------------------------------------
# directed presence
# ---------------------------------------------------------------------------


async def test_directed_presence_and_unavailable_on_disconnect(xmpp, make_account):
    """RFC 6121 4.6: presence sent to a JID that is not subscribed is
    delivered, and when the sender's session ends that JID gets unavailable
    presence from it."""
    (a, pa), (c, pc) = make_account("dira"), make_account("dirc")
    alice = await xmpp(a, pa, "pc")
    carol = await xmpp(c, pc, "desk")
    alice.send_presence()
    carol.send_presence()
    await alice.sync()
    await carol.sync()
    assert c + "@" + DOMAIN not in await alice.roster_items()

    status = unique("just-for-you-")
    mark = carol.mark()
    alice.send_presence(pto=carol.boundjid.full, pstatus=status)
    pres = await carol.wait_for(is_presence(alice.boundjid.full, None, status),
                                "alice's directed presence", since=mark)
    assert pres.xml.get("to") == carol.boundjid.full, pres

    alice_full = alice.boundjid.full
    await alice.close()
    await carol.wait_for(is_presence(alice_full, "unavailable"),
                         "unavailable from alice after her session ended", since=mark)


# ---------------------------------------------------------------------------
# roster versioning (RFC 6121 2.6)
# ---------------------------------------------------------------------------


def roster_query(ver: str) -> str:
    return f"<query xmlns='{NS_ROSTER}' ver='{ver}'/>"


def roster_jids(res) -> set[str]:
    return {item.get("jid") for item in res.xml.iter(q(NS_ROSTER, "item"))}


async def test_roster_versioning(xmpp, make_account):
    user, pw = make_account("rosver")
    c = await xmpp(user, pw, "r")
    first, second = f"{unique('eve')}@{DOMAIN}", f"{unique('fay')}@{DOMAIN}"
    await c.iq(roster_set_iq(c, first, name="Eve"))

    # Empty 'ver': the client has no cache, the full roster comes with a version.
    res = await c.iq_xml("get", roster_query(""))
    assert res["type"] == "result", res
    query = res.xml.find(q(NS_ROSTER, "query"))
    assert query is not None, f"no roster in answer to ver='': {res}"
    v1 = query.get("ver")
    assert v1, f"roster result without 'ver': {res}"
    assert roster_jids(res) == {first}, res

    # Up to date: empty result, no <query/>.
    res = await c.iq_xml("get", roster_query(v1))
    assert res["type"] == "result", res
    assert len(res.xml) == 0, f"expected an empty result for the current version: {res}"

    # The roster changes: the push carries the new version ...
    mark = c.mark()
    await c.iq(roster_set_iq(c, second, name="Fay"))
    push = await c.wait_for(is_roster_push(second), "roster push for the second item",
                            since=mark)
    v2 = push.xml.find(q(NS_ROSTER, "query")).get("ver")
    assert v2 and v2 != v1, f"roster push without a new version (had {v1}): {push}"

    # ... an old version gets the whole roster with the new version ...
    res = await c.iq_xml("get", roster_query(v1))
    assert res["type"] == "result", res
    query = res.xml.find(q(NS_ROSTER, "query"))
    assert query is not None, f"stale version answered without a roster: {res}"
    assert query.get("ver") == v2, res
    assert roster_jids(res) == {first, second}, res

    # ... and the new version is current.
    res = await c.iq_xml("get", roster_query(v2))
    assert res["type"] == "result" and len(res.xml) == 0, res


# ---------------------------------------------------------------------------
# vCard (XEP-0054)
# ---------------------------------------------------------------------------


def vcard_of(res) -> ET.Element:
    assert res["type"] == "result", f"vCard request failed: {res}"
    vcard = res.xml.find(q(NS_VCARD, "vCard"))
    assert vcard is not None, f"no <vCard xmlns='vcard-temp'/> in {res}"
    return vcard


async def test_vcard_set_get_and_get_other(xmpp, make_account):
    (a, pa), (b, pb), (n, pn) = make_account("vca"), make_account("vcb"), make_account("vcn")
    alice = await xmpp(a, pa, "pc")
    bob = await xmpp(b, pb, "phone")
    nobody = await xmpp(n, pn, "x")
    nick = unique("ally")

    res = await alice.iq_xml("set", f"<vCard xmlns='{NS_VCARD}'><FN>Alice Example</FN>"
                                    f"<NICKNAME>{nick}</NICKNAME></vCard>")
    assert res["type"] == "result", f"vCard set failed: {res}"

    vcard = vcard_of(await alice.iq_xml("get", f"<vCard xmlns='{NS_VCARD}'/>"))
    assert vcard.findtext(q(NS_VCARD, "FN")) == "Alice Example", ET.tostring(vcard)
    assert vcard.findtext(q(NS_VCARD, "NICKNAME")) == nick, ET.tostring(vcard)

    # Another user reads it at alice's bare JID; the server answers for her.
    res = await bob.iq_xml("get", f"<vCard xmlns='{NS_VCARD}'/>", to=f"{a}@{DOMAIN}")
    assert res.xml.get("from") == f"{a}@{DOMAIN}", res
    vcard = vcard_of(res)
    assert vcard.findtext(q(NS_VCARD, "FN")) == "Alice Example", ET.tostring(vcard)
    assert vcard.findtext(q(NS_VCARD, "NICKNAME")) == nick, ET.tostring(vcard)

    # A set replaces the whole vCard.
    res = await alice.iq_xml("set", f"<vCard xmlns='{NS_VCARD}'><FN>Alice B. Example</FN></vCard>")
    assert res["type"] == "result", res
    vcard = vcard_of(await bob.iq_xml("get", f"<vCard xmlns='{NS_VCARD}'/>", to=f"{a}@{DOMAIN}"))
    assert vcard.findtext(q(NS_VCARD, "FN")) == "Alice B. Example", ET.tostring(vcard)
    assert vcard.find(q(NS_VCARD, "NICKNAME")) is None, ET.tostring(vcard)

    # No vCard stored: an empty vCard element, asked by the user or by others.
    for asker, to in ((nobody, None), (bob, f"{n}@{DOMAIN}")):
        vcard = vcard_of(await asker.iq_xml("get", f"<vCard xmlns='{NS_VCARD}'/>", to=to))
        assert len(vcard) == 0 and not (vcard.text or "").strip(), \
            f"expected an empty vCard, got {ET.tostring(vcard)!r}"
