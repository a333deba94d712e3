"""RFC 6121 instant messaging and presence plus a few XEPs (disco, ping,
offline storage), checked with slixmpp clients against the real server."""

from __future__ import annotations

import datetime as dt

from xmpp_helpers import (
    DOMAIN,
    NS_CLIENT,
    NS_DELAY,
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    NS_ROSTER,
    XmppClient,
    is_message_with_body,
    is_presence,
    is_roster_push,
    q,
    stanza_error,
    stanza_kind,
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
