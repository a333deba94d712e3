"""XEP-0045 Multi-User Chat on muc.localhost: announcement channels, ad-hoc
rooms (creation, instant room, kick, members-only), the per-room message
rate limit and service discovery."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from xmpp_helpers import (
    metric,
    owner_and_member_in,
    connect_muc,
    DOMAIN,
    MUC_DOMAIN,
    NS_DISCO_INFO,
    NS_DISCO_ITEMS,
    NS_MAM,
    NS_MUC,
    NS_MUC_OWNER,
    add_member,
    create_waddle,
    data_form,
    is_error_from,
    is_groupchat,
    is_occupant_presence,
    join_room,
    join_room_error,
    muc_item,
    muc_statuses,
    q,
    stanza_error,
    stanza_ids,
    stanza_kind,
    unique,
)


_connect = connect_muc


def _role(presence) -> tuple[str, str]:
    item = muc_item(presence)
    assert item is not None, f"no muc#user item: {presence}"
    return item.get("affiliation"), item.get("role")


# ---------------------------------------------------------------------------
# announcement channels
# ---------------------------------------------------------------------------


async def test_announcements_owner_and_moderators_post(http, make_user, xmpp):
    alice, bob, dave = make_user("alice"), make_user("bob"), make_user("dave")
    w = create_waddle(http, alice)
    add_member(http, w, alice, bob)
    add_member(http, w, alice, dave, role="moderator")
    room = w.room("announcements")
    a, b, d = await _connect(xmpp, alice), await _connect(xmpp, bob), await _connect(xmpp, dave)

    ja = await join_room(a, room, "alice", maxstanzas=0)
    assert _role(ja.presence) == ("owner", "moderator"), ja.presence
    jd = await join_room(d, room, "dave", maxstanzas=0)
    assert _role(jd.presence)[1] == "moderator", jd.presence
    await join_room(b, room, "bob", maxstanzas=0)

    for sender, nick in ((a, "alice"), (d, "dave")):
        text = unique(f"news-from-{nick}-")
        sender.send_message(mto=room, mbody=text, mtype="groupchat")
        for c in (a, b, d):
            got = await c.wait_for(is_groupchat(room, text, nick=nick),
                                   f"{nick}'s announcement at {c.boundjid.bare}")
            assert stanza_ids(got).get(room), got
            # One serialization for all occupants, each copy addressed to its reader.
            assert got["to"] == c.boundjid, (got["to"], c.boundjid)


async def test_announcements_member_is_visitor_and_cannot_post(http, make_user, xmpp):
    pair = await owner_and_member_in(http, make_user, xmpp, "announcements")
    room, a, b = pair.room, pair.a, pair.b
    assert _role(pair.bob_join.presence) == ("member", "visitor"), pair.bob_join.presence

    text = unique("not-allowed-")
    a_mark, b_mark = a.mark(), b.mark()
    b.send_message(mto=room, mbody=text, mtype="groupchat")
    err = await b.wait_for(is_error_from("message", room, text), "error for a visitor's groupchat",
                           since=b_mark)
    assert stanza_error(err)[1] == "forbidden", err
    await a.assert_none(is_groupchat(room, text), "a visitor's groupchat", since=a_mark)


# ---------------------------------------------------------------------------
# ad-hoc rooms
# ---------------------------------------------------------------------------


async def test_adhoc_room_create_configure_kick_members_only(make_user, xmpp):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    a, b, c = await _connect(xmpp, alice), await _connect(xmpp, bob), await _connect(xmpp, carol)
    room = f"{unique('lounge')}@{MUC_DOMAIN}"
    muc = a.plugin["xep_0045"]

    # Creation: the creator is owner, the room is locked (201).
    ja = await join_room(a, room, "alice")
    assert {110, 201} <= muc_statuses(ja.presence), ja.presence
    assert _role(ja.presence) == ("owner", "moderator"), ja.presence
    err = await join_room_error(b, room, "bob")
    assert stanza_error(err)[1] == "item-not-found", f"locked room admitted bob or said {err}"

    # The instant room: an empty submitted form unlocks it.
    res = await a.iq_xml("set", f"<query xmlns='{NS_MUC_OWNER}'>{data_form()}</query>", to=room)
    assert res["type"] == "result", res
    a_mark = a.mark()
    jb = await join_room(b, room, "bob")
    assert 201 not in muc_statuses(jb.presence), jb.presence
    assert _role(jb.presence) == ("none", "participant"), jb.presence
    await a.wait_for(is_occupant_presence(room, "bob"), "bob's arrival", since=a_mark)

    # Kick (role none): status 307 for bob and for the others.
    a_mark, b_mark = a.mark(), b.mark()
    await muc.set_role(room, "bob", "none", reason="cool down")
    kicked = await b.wait_for(is_occupant_presence(room, "bob", "unavailable"), "bob's kick",
                              since=b_mark)
    assert {110, 307} <= muc_statuses(kicked), kicked
    assert _role(kicked)[1] == "none", kicked
    seen = await a.wait_for(is_occupant_presence(room, "bob", "unavailable"), "bob's kick at alice",
                            since=a_mark)
    assert 307 in muc_statuses(seen), seen
    text = unique("kicked-")
    b.send_message(mto=room, mbody=text, mtype="groupchat")
    await b.wait_for(is_error_from("message", room, text), "error for a kicked occupant's message",
                     since=b_mark)

    # Members-only through the configuration form (slixmpp's get/set_room_config).
    form = await muc.get_room_config(room)
    fields = form.get_fields()
    assert fields["muc#roomconfig_membersonly"]["value"] is False, form
    fields["muc#roomconfig_membersonly"]["value"] = True
    a_mark = a.mark()
    await muc.set_room_config(room, form)
    change = await a.wait_for(lambda st: stanza_kind(st) == "message" and st.xml.get("from") == room
                              and 104 in muc_statuses(st), "config-change notice (104)", since=a_mark)
    assert change.xml.get("type") == "groupchat", change
    info = await a.iq_xml("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=room)
    features = {f.get("var") for f in info.xml.iter(q(NS_DISCO_INFO, "feature"))}
    assert "muc_membersonly" in features and "muc_open" not in features, features

    for client, nick in ((c, "carol"), (b, "bob")):
        err = await join_room_error(client, room, nick)
        assert stanza_error(err) == ("auth", "registration-required"), err

    # Making bob a member lets him back in.
    await muc.set_affiliation(room, "member", jid=bob.jid)
    jb = await join_room(b, room, "bob", maxstanzas=0)
    assert _role(jb.presence) == ("member", "participant"), jb.presence


# ---------------------------------------------------------------------------
# rate limit
# ---------------------------------------------------------------------------


async def test_groupchat_rate_limit_per_room(http, make_user, xmpp):
    pair = await owner_and_member_in(http, make_user, xmpp, "general")
    room, a, b = pair.room, pair.a, pair.b
    before = metric(http, "xmpp_rate_limited_total", 'limit="message"')

    tag = unique("burst")
    texts = [f"{tag}-{i}" for i in range(11)]
    b_mark, a_mark = b.mark(), a.mark()
    for text in texts:  # back to back: the bucket holds 10 per 10 s
        b.send_message(mto=room, mbody=text, mtype="groupchat")

    err = await b.wait_for(is_error_from("message", room, texts[10]), "policy-violation for the 11th",
                           since=b_mark)
    assert stanza_error(err) == ("modify", "policy-violation"), err
    for text in texts[:10]:
        await a.wait_for(is_groupchat(room, text, nick="bob"), f"reflection of {text}", since=a_mark)
        await b.wait_for(is_groupchat(room, text, nick="bob"), f"own reflection of {text}",
                         since=b_mark)
    await a.assert_none(is_groupchat(room, texts[10]), "the rate-limited message", since=a_mark)
    refused = [st for st in b.received[b_mark:]
               if stanza_kind(st) == "message" and st.xml.get("type") == "error"]
    assert len(refused) == 1, "\n".join(str(s) for s in refused)

    after = metric(http, "xmpp_rate_limited_total", 'limit="message"')
    assert after >= before + 1, (before, after)


# ---------------------------------------------------------------------------
# service discovery
# ---------------------------------------------------------------------------


def _identities(iq) -> set[tuple[str, str]]:
    return {(i.get("category"), i.get("type")) for i in iq.xml.iter(q(NS_DISCO_INFO, "identity"))}


def _features(iq) -> set[str]:
    return {f.get("var") for f in iq.xml.iter(q(NS_DISCO_INFO, "feature"))}


async def test_disco_muc_service_and_channel_rooms(http, make_user, xmpp):
    alice, carol = make_user("alice"), make_user("carol")
    w = create_waddle(http, alice)
    a, c = await _connect(xmpp, alice), await _connect(xmpp, carol)

    svc = await a.plugin["xep_0030"].get_info(jid=MUC_DOMAIN, timeout=10)
    assert ("conference", "text") in _identities(svc), svc
    assert NS_MUC in _features(svc), svc

    general = await a.plugin["xep_0030"].get_info(jid=w.room("general"), timeout=10)
    assert ("conference", "text") in _identities(general), general
    feats = _features(general)
    for f in (NS_MUC, "muc_membersonly", "muc_persistent", NS_MAM):
        assert f in feats, (f, feats)
    assert "muc_moderated" not in feats, feats
    news = await a.plugin["xep_0030"].get_info(jid=w.room("announcements"), timeout=10)
    assert {"muc_membersonly", "muc_persistent", "muc_moderated"} <= _features(news), news

    # Outsiders learn nothing about a channel room.
    res = await c.iq_xml("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=w.room("general"))
    assert res["type"] == "error" and stanza_error(res)[1] == "forbidden", res


async def test_server_disco_items_lists_the_muc_service(make_user, xmpp):
    alice = make_user("alice")
    a = await _connect(xmpp, alice)
    res = await a.iq_xml("get", f"<query xmlns='{NS_DISCO_ITEMS}'/>", to=DOMAIN)
    assert res["type"] == "result", res
    items = {i.get("jid") for i in res.xml.iter(q(NS_DISCO_ITEMS, "item"))}
    assert MUC_DOMAIN in items, f"server disco#items must list {MUC_DOMAIN}: {sorted(items)}"
    info = await a.plugin["xep_0030"].get_info(jid=MUC_DOMAIN, timeout=10)
    assert ("conference", "text") in _identities(info), info


async def _service_items(client) -> dict[str, str]:
    res = await client.iq_xml("get", f"<query xmlns='{NS_DISCO_ITEMS}'/>", to=MUC_DOMAIN)
    assert res["type"] == "result", res
    return {i.get("jid"): i.get("name") for i in res.xml.iter(q(NS_DISCO_ITEMS, "item"))}


async def test_service_lists_public_rooms_only(http, make_user, xmpp):
    alice, bob = make_user("alice"), make_user("bob")
    w = create_waddle(http, alice)
    a, b = await _connect(xmpp, alice), await _connect(xmpp, bob)
    room = f"{unique('plaza')}@{MUC_DOMAIN}"
    await join_room(a, room, "alice")
    assert room not in await _service_items(b), "a locked room is not listed"

    # Configured persistent, public and named: listed under its name.
    muc = a.plugin["xep_0045"]
    form = await muc.get_room_config(room)
    fields = form.get_fields()
    fields["muc#roomconfig_persistentroom"]["value"] = True
    fields["muc#roomconfig_roomname"]["value"] = "The Plaza"
    await muc.set_room_config(room, form)
    items = await _service_items(b)
    assert items.get(room) == "The Plaza", items
    for channel in ("general", "announcements"):
        assert w.room(channel) not in items, "channel rooms are members-only and never listed"

    # Destroyed: gone from the listing, and the JID is free for a new room.
    res = await a.iq_xml("set", f"<query xmlns='{NS_MUC_OWNER}'><destroy/></query>", to=room)
    assert res["type"] == "result", res
    assert room not in await _service_items(b)
    jb = await join_room(b, room, "bob")
    assert {110, 201} <= muc_statuses(jb.presence), "a destroyed ad-hoc room starts afresh"


async def test_direct_invitation_reaches_the_invitee(make_user, xmpp):
    alice, bob = make_user("alice"), make_user("bob")
    a, b = await _connect(xmpp, alice), await _connect(xmpp, bob)
    room = f"{unique('invite')}@{MUC_DOMAIN}"
    b_mark = b.mark()
    invite = a.make_message(mto=b.boundjid.full)
    x = ET.SubElement(invite.xml, "{jabber:x:conference}x", {"jid": room, "reason": "join us"})
    assert x is not None
    invite.send()
    got = await b.wait_for(lambda st: stanza_kind(st) == "message"
                           and st.xml.find("{jabber:x:conference}x") is not None,
                           "XEP-0249 invitation", since=b_mark)
    x = got.xml.find("{jabber:x:conference}x")
    assert x.get("jid") == room and x.get("reason") == "join us", got
    assert got.xml.get("from", "").startswith(alice.jid + "/"), got


# ---------------------------------------------------------------------------
# nicknames: RFC 8266 comparison and reserved member nicknames
# ---------------------------------------------------------------------------


async def test_nicknames_equal_after_case_and_width_folding_collide(http, make_user, xmpp):
    owner, bob, carol = make_user("owner"), make_user("bob"), make_user("carol")
    w = create_waddle(http, owner)
    add_member(http, w, owner, bob)
    add_member(http, w, owner, carol)
    room = w.room("general")
    o, b, c = await _connect(xmpp, owner), await _connect(xmpp, bob), await _connect(xmpp, carol)
    await join_room(o, room, "Alice", maxstanzas=0)
    for client, nick in ((b, "alice"), (c, "\uff41\uff4c\uff49\uff43\uff45"), (c, "ALICE"),
                         (b, "\u0430lice")):
        err = await join_room_error(client, room, nick)
        assert stanza_error(err)[1] == "conflict", (nick, err)
    # A different nickname still gets in.
    await join_room(b, room, "Alicia", maxstanzas=0)


async def test_a_members_username_is_reserved_in_channel_rooms(http, make_user, xmpp):
    """bob, a member, cannot take the owner's username as his nickname while the owner
    is away (XEP-0045 §7.2.9 registered nicknames); the owner then joins with it."""
    alice, bob = make_user("alice"), make_user("bob")
    w = create_waddle(http, alice)
    add_member(http, w, alice, bob)
    room = w.room("general")
    b = await _connect(xmpp, bob)
    for nick in (alice.username, alice.username.upper()):
        err = await join_room_error(b, room, nick)
        assert stanza_error(err)[1] == "conflict", (nick, err)
    await join_room(b, room, "bob", maxstanzas=0)
    # Nor by a nickname change.
    b_mark = b.mark()
    b.send_presence(pto=f"{room}/{alice.username}")
    err = await b.wait_for(lambda st: stanza_kind(st) == "presence" and st.xml.get("type") == "error",
                           "the refused nickname change", since=b_mark)
    assert stanza_error(err)[1] == "conflict", err

    a = await _connect(xmpp, alice)
    joined = await join_room(a, room, alice.username, maxstanzas=0)
    assert _role(joined.presence)[0] == "owner", joined.presence
