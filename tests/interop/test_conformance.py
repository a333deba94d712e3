"""Protocol rules real clients depend on: a resource's own presence comes back to it
(RFC 6121 §4.2.2, §4.4.2, §4.5.2), an archive query right after delivery returns what
was delivered (XEP-0313 with XEP-0359 ids), the user archive is advertised on the bare
JID (XEP-0313 §6), and stanzas a room emits are routed like any other (a mediated
invitation, XEP-0045 §7.8.2, to a bare JID reaches an online and an offline invitee)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from xmpp_helpers import (
    MUC_DOMAIN,
    NS_DISCO_INFO,
    NS_MAM,
    NS_MUC_OWNER,
    NS_MUC_USER,
    connect_muc,
    data_form,
    is_groupchat,
    is_message_with_body,
    is_presence,
    join_room,
    mam_query,
    owner_and_member_in,
    q,
    stanza_ids,
    unique,
)


async def test_own_presence_is_reflected_initial_update_and_unavailable(make_user, xmpp):
    alice = make_user("alice")
    a1 = await xmpp(alice.username, alice.password, "one")
    own = a1.boundjid.full

    mark = a1.mark()
    a1.send_presence()
    await a1.wait_for(is_presence(own), "its own initial presence", since=mark)

    mark = a1.mark()
    a1.send_presence(pshow="away", pstatus="lunch")
    got = await a1.wait_for(is_presence(own), "its own updated presence", since=mark)
    assert got["show"] == "away" and got["status"] == "lunch", got

    # A second resource: each sees the other's presence and its own.
    a2 = await xmpp(alice.username, alice.password, "two")
    mark1, mark2 = a1.mark(), a2.mark()
    a2.send_presence()
    await a2.wait_for(is_presence(a2.boundjid.full), "its own initial presence", since=mark2)
    await a2.wait_for(is_presence(own), "the other resource's current presence", since=mark2)
    await a1.wait_for(is_presence(a2.boundjid.full), "the new resource's presence", since=mark1)

    mark1, mark2 = a1.mark(), a2.mark()
    a2.send_presence(ptype="unavailable")
    await a2.wait_for(is_presence(a2.boundjid.full, "unavailable"), "its own unavailable", since=mark2)
    await a1.wait_for(is_presence(a2.boundjid.full, "unavailable"), "the other's unavailable",
                      since=mark1)


async def test_user_archive_query_right_after_delivery_returns_the_message(make_user, xmpp):
    alice, bob = make_user("alice"), make_user("bob")
    a, b = await connect_muc(xmpp, alice), await connect_muc(xmpp, bob)
    for round_ in range(3):
        body = unique(f"ryw{round_}-")
        mark = b.mark()
        a.send_message(mto=b.boundjid.full, mbody=body, mtype="chat")
        got = await b.wait_for(is_message_with_body(body, "chat"), "the chat", since=mark)
        sid = stanza_ids(got).get(bob.jid)
        assert sid, f"no stanza id by {bob.jid}: {got}"
        # No polling: the very first query after delivery must hold it, for both parties.
        for client in (b, a):
            page = await mam_query(client, with_jid=None, max=50, before=True)
            assert page.error == (None, None), page.iq
            assert sid in page.ids, f"{client.boundjid}: {sid} missing from {page.ids}"


async def test_room_archive_query_right_after_reflection_returns_the_message(http, make_user, xmpp):
    pair = await owner_and_member_in(http, make_user, xmpp, "general")
    for round_ in range(3):
        body = unique(f"room-ryw{round_}-")
        mark = pair.b.mark()
        pair.a.send_message(mto=pair.room, mbody=body, mtype="groupchat")
        got = await pair.b.wait_for(is_groupchat(pair.room, body), "the reflection", since=mark)
        sid = stanza_ids(got).get(pair.room)
        assert sid, f"no stanza id by the room: {got}"
        page = await mam_query(pair.b, pair.room, max=50, before=True)
        assert page.error == (None, None), page.iq
        assert sid in page.ids, f"{sid} missing from the room archive's last page {page.ids}"


async def test_account_disco_lists_the_archive(make_user, xmpp):
    alice, bob = make_user("alice"), make_user("bob")
    a = await xmpp(alice.username, alice.password, "pc")
    for target in (alice.jid, bob.jid):
        res = await a.iq_xml("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=target)
        assert res["type"] == "result", res
        features = {f.get("var") for f in res.xml.iter(q(NS_DISCO_INFO, "feature"))}
        assert NS_MAM in features, f"disco#info of {target}: {sorted(features)}"


def _is_invitation(room: str, inviter: str):
    def pred(st) -> bool:
        if st.xml.tag != "{jabber:client}message" or st.xml.get("from") != room:
            return False
        invite = st.xml.find(f"{q(NS_MUC_USER, 'x')}/{q(NS_MUC_USER, 'invite')}")
        return invite is not None and invite.get("from", "").split("/")[0] == inviter
    return pred


async def test_mediated_invitation_to_a_bare_jid_reaches_online_and_offline_invitees(make_user,
                                                                                     xmpp):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    a, b = await connect_muc(xmpp, alice), await connect_muc(xmpp, bob)
    b.send_presence()
    await b.sync()
    room = f"{unique('invites')}@{MUC_DOMAIN}"
    await join_room(a, room, "alice")
    res = await a.iq_xml("set", f"<query xmlns='{NS_MUC_OWNER}'>{data_form()}</query>", to=room)
    assert res["type"] == "result", res

    for invitee in (bob.jid, carol.jid):
        msg = a.make_message(mto=room)
        x = ET.SubElement(msg.xml, q(NS_MUC_USER, "x"))
        invite = ET.SubElement(x, q(NS_MUC_USER, "invite"), {"to": invitee})
        ET.SubElement(invite, q(NS_MUC_USER, "reason")).text = "come in"
        msg.send()

    got = await b.wait_for(_is_invitation(room, alice.jid), "the invitation (online)")
    assert got.xml.get("to", "").split("/")[0] == bob.jid, got

    # carol was offline: the invitation waits in offline storage for her first presence.
    c = await connect_muc(xmpp, carol)
    mark = c.mark()
    c.send_presence()
    got = await c.wait_for(_is_invitation(room, alice.jid), "the invitation (stored offline)",
                           since=mark)
    reason = got.xml.find(f"{q(NS_MUC_USER, 'x')}/{q(NS_MUC_USER, 'invite')}/{q(NS_MUC_USER, 'reason')}")
    assert reason is not None and reason.text == "come in", got
