"""XEP-0313 Message Archive Management with XEP-0359 stanza ids: room
archives (RSM paging, access), reactions and retractions, history and
archive across a restart, and users' 1:1 archives."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from xmpp_helpers import (
    connect_muc,
    DOMAIN,
    MUC_PLUGINS,
    NS_DELAY,
    NS_FALLBACK,
    NS_FORWARD,
    NS_MAM,
    NS_REACTIONS,
    NS_RETRACT,
    add_member,
    body_of,
    create_waddle,
    is_error_from,
    is_groupchat,
    is_message_with_body,
    join_room,
    join_room_error,
    mam_query,
    mam_wait,
    q,
    stanza_error,
    stanza_ids,
    unique,
)


_connect = connect_muc


async def _three_in_general(http, xmpp, alice, bob, dave):
    """A waddle owned by alice with bob and dave as members, all three connected and in
    its general channel's room (no history replayed): `(room, a, b, d)`."""
    w = create_waddle(http, alice)
    add_member(http, w, alice, bob)
    add_member(http, w, alice, dave)
    room = w.room("general")
    a, b, d = await _connect(xmpp, alice), await _connect(xmpp, bob), await _connect(xmpp, dave)
    for client, nick in ((a, "alice"), (b, "bob"), (d, "dave")):
        await join_room(client, room, nick, maxstanzas=0)
    return room, a, b, d


def _send_xml(client, to: str, mtype: str, children: str, body: str | None = None) -> None:
    """A message with hand-written payload elements (each with its xmlns)."""
    msg = client.make_message(mto=to, mtype=mtype, mbody=body)
    for child in ET.fromstring(f"<wrap>{children}</wrap>"):
        msg.xml.append(child)
    msg.send()


def _reflections(client, room: str, tag: str, since: int = 0) -> list:
    """Groupchat messages from ``room`` whose body starts with ``tag``, in
    arrival order."""
    return [st for st in client.received[since:]
            if is_groupchat(room)(st) and (body_of(st) or "").startswith(tag)]


# ---------------------------------------------------------------------------
# room archive: paging
# ---------------------------------------------------------------------------


async def test_room_archive_paging_and_access(http, make_user, xmpp):
    alice, bob, dave, carol = (make_user("alice"), make_user("bob"), make_user("dave"),
                               make_user("carol"))
    room, a, b, d = await _three_in_general(http, xmpp, alice, bob, dave)

    # 25 messages from three senders, each under the 10-per-10-s per-room limit.
    tag = unique("page")
    a_mark, b_mark = a.mark(), b.mark()
    sent = []
    for client, nick, n in ((a, "alice", 9), (b, "bob", 8), (d, "dave", 8)):
        for i in range(n):
            text = f"{tag}-{nick}-{i:02d}"
            client.send_message(mto=room, mbody=text, mtype="groupchat")
            sent.append(text)
    for text in sent:
        await a.wait_for(is_groupchat(room, text), f"reflection of {text}", since=a_mark)
        await b.wait_for(is_groupchat(room, text), f"reflection of {text} at bob", since=b_mark)
    # The room's order, as every occupant sees it; ids as the room stamped them.
    seen = _reflections(a, room, tag, a_mark)
    assert len(seen) == 25, [body_of(s) for s in seen]
    order = [body_of(s) for s in seen]
    assert [body_of(s) for s in _reflections(b, room, tag, b_mark)] == order
    ids = [stanza_ids(s).get(room) for s in seen]
    assert all(ids) and len(set(ids)) == 25, ids
    assert [stanza_ids(s).get(room) for s in _reflections(b, room, tag, b_mark)] == ids
    for nick in ("alice", "bob", "dave"):  # each sender's own messages keep their order
        mine = [t for t in order if t.startswith(f"{tag}-{nick}-")]
        assert mine == sorted(mine), mine

    await mam_wait(a, room, lambda p: p.count == 25, "all 25 messages", max=0)

    p1 = await mam_query(a, room, max=10)
    assert p1.error == (None, None), p1.iq
    assert p1.ids == ids[:10] and p1.bodies == order[:10], (p1.bodies, order)
    assert not p1.complete and p1.count == 25, p1.iq
    assert (p1.rsm("first"), p1.rsm("last")) == (ids[0], ids[9]), p1.iq
    p2 = await mam_query(a, room, max=10, after=p1.rsm("last"))
    assert p2.ids == ids[10:20] and p2.bodies == order[10:20], p2.bodies
    assert not p2.complete, p2.iq
    p3 = await mam_query(a, room, max=10, after=p2.rsm("last"))
    assert p3.ids == ids[20:] and p3.bodies == order[20:], p3.bodies
    assert p3.complete and p3.count == 25, p3.iq

    for page in (p1, p2, p3):
        for result, msg in zip(page.results, page.messages):
            assert msg is not None, f"result without a forwarded message: {ET.tostring(result)!r}"
            assert stanza_ids(msg).get(room) == result.get("id"), ET.tostring(result)
            assert msg.get("from", "").startswith(room + "/"), ET.tostring(msg)
            delay = result.find(f"{q(NS_FORWARD, 'forwarded')}/{q(NS_DELAY, 'delay')}")
            assert delay is not None and delay.get("stamp"), ET.tostring(result)

    # The last page (empty <before/>), then the page before it.
    last = await mam_query(a, room, max=10, before=True)
    assert last.error == (None, None), last.iq
    assert last.ids == ids[15:], (last.bodies, order[15:])
    assert not last.complete, last.iq
    prev = await mam_query(a, room, max=10, before=last.rsm("first"))
    assert prev.ids == ids[5:15], prev.bodies

    # A member may read the archive; an outsider may not.
    by_bob = await mam_query(b, room, max=5)
    assert by_bob.ids == ids[:5], by_bob.iq
    c = await _connect(xmpp, carol)
    denied = await mam_query(c, room, max=10)
    assert denied.iq["type"] == "error" and denied.error[1] == "forbidden", denied.iq
    assert denied.results == [], denied.results
    assert not [st for st in c.received if st.xml.find(q(NS_MAM, "result")) is not None], \
        "an outsider received archived messages"


# ---------------------------------------------------------------------------
# room archive: reactions and retractions
# ---------------------------------------------------------------------------


async def test_reaction_and_retraction_in_room_and_archive(http, make_user, xmpp):
    alice, bob, dave = make_user("alice"), make_user("bob"), make_user("dave")
    room, a, b, d = await _three_in_general(http, xmpp, alice, bob, dave)

    target = unique("target-")
    b.send_message(mto=room, mbody=target, mtype="groupchat")
    got = await a.wait_for(is_groupchat(room, target, nick="bob"), "the target message")
    target_id = stanza_ids(got).get(room)
    assert target_id, got

    # Reaction (XEP-0444): reflected with its payload and archived.
    b_mark = b.mark()
    _send_xml(a, room, "groupchat",
              f"<reactions xmlns='{NS_REACTIONS}' id='{target_id}'><reaction>👍</reaction></reactions>")

    def is_reaction(st):
        r = st.xml.find(q(NS_REACTIONS, "reactions"))
        return (is_groupchat(room, nick="alice")(st) and r is not None
                and r.get("id") == target_id)
    reflected = await b.wait_for(is_reaction, "the reflected reaction", since=b_mark)
    reactions = reflected.xml.find(q(NS_REACTIONS, "reactions"))
    assert [r.text for r in reactions.findall(q(NS_REACTIONS, "reaction"))] == ["👍"], reflected
    reaction_id = stanza_ids(reflected).get(room)
    assert reaction_id, reflected

    page = await mam_wait(a, room, lambda p: reaction_id in p.ids, "the reaction")
    archived = page.messages[page.ids.index(reaction_id)]
    r = archived.find(q(NS_REACTIONS, "reactions"))
    assert r is not None and r.get("id") == target_id, ET.tostring(archived)
    assert [x.text for x in r.findall(q(NS_REACTIONS, "reaction"))] == ["👍"], ET.tostring(archived)
    assert page.ids.index(target_id) < page.ids.index(reaction_id), page.ids

    # Someone else's message cannot be retracted by a plain member.
    a_mark, d_mark = a.mark(), d.mark()
    _send_xml(d, room, "groupchat", f"<retract xmlns='{NS_RETRACT}' id='{target_id}'/>",
              body="dave tries to retract")
    err = await d.wait_for(is_error_from("message", room, "dave tries to retract"),
                           "error for retracting another's message", since=d_mark)
    assert stanza_error(err)[1] == "forbidden", err
    await a.assert_none(lambda st: st.xml.find(q(NS_RETRACT, "retract")) is not None,
                        "dave's retraction", since=a_mark)

    # The author retracts (XEP-0424, with the fallback body).
    fallback = "This person attempted to retract a previous message, but it's unsupported."
    _send_xml(b, room, "groupchat",
              f"<retract xmlns='{NS_RETRACT}' id='{target_id}'/>"
              f"<fallback xmlns='{NS_FALLBACK}' for='{NS_RETRACT}'/>", body=fallback)

    def is_retraction(st):
        r = st.xml.find(q(NS_RETRACT, "retract"))
        return is_groupchat(room, nick="bob")(st) and r is not None and r.get("id") == target_id
    retraction = await a.wait_for(is_retraction, "the reflected retraction", since=a_mark)
    await d.wait_for(is_retraction, "the reflected retraction at dave", since=d_mark)
    retraction_id = stanza_ids(retraction).get(room)
    assert retraction_id, retraction

    page = await mam_wait(a, room, lambda p: target_id not in p.ids and retraction_id in p.ids,
                          "the original gone and the retraction archived")
    assert target not in page.bodies, page.bodies
    assert reaction_id in page.ids, page.ids
    assert page.count == 2, (page.count, page.ids)

    # A new joiner's discussion history no longer has the original either.
    b2 = await xmpp(bob.username, bob.password, "tablet", plugins=MUC_PLUGINS)
    joined = await join_room(b2, room, "bob-tablet")
    history_bodies = [body_of(m) for m in joined.history]
    assert target not in history_bodies, history_bodies
    assert any(m.xml.find(q(NS_REACTIONS, "reactions")) is not None for m in joined.history), \
        [str(m) for m in joined.history]


# ---------------------------------------------------------------------------
# history and archive across a restart
# ---------------------------------------------------------------------------


async def test_room_history_and_archive_survive_restart(restartable_server, restart_http,
                                                        restart_make_user, restart_xmpp):
    alice, bob, carol = (restart_make_user("alice"), restart_make_user("bob"),
                         restart_make_user("carol"))
    w = create_waddle(restart_http, alice)
    add_member(restart_http, w, alice, bob)
    room = w.room("general")
    a = await restart_xmpp(alice.username, alice.password, "before", plugins=MUC_PLUGINS)
    await join_room(a, room, "alice", maxstanzas=0)
    texts = [unique(f"before-restart-{i}-") for i in range(3)]
    for text in texts:
        a.send_message(mto=room, mbody=text, mtype="groupchat")
    ids = []
    for text in texts:
        got = await a.wait_for(is_groupchat(room, text, nick="alice"), f"reflection of {text}")
        ids.append(stanza_ids(got).get(room))
    assert all(ids), ids
    await a.close()

    # No waiting for the archive: a graceful stop must flush it.
    restartable_server.restart()

    status, body = restart_http("GET", f"/v1/waddles/{w.id}", bearer=alice.token)
    assert status == 200, (status, body)
    assert {c["room_jid"] for c in body["channels"]} == {w.room("general"), w.room("announcements")}

    a2 = await restart_xmpp(alice.username, alice.password, "after", plugins=MUC_PLUGINS)
    joined = await join_room(a2, room, "alice")
    assert [body_of(m) for m in joined.history] == texts, [str(m) for m in joined.history]
    for msg, sid in zip(joined.history, ids):
        delay = msg.xml.find(q(NS_DELAY, "delay"))
        assert delay is not None and delay.get("from") == room and delay.get("stamp"), msg
        assert stanza_ids(msg).get(room) == sid, msg
        assert msg.xml.get("from") == f"{room}/alice", msg

    page = await mam_wait(a2, room, lambda p: p.count == 3, "the 3 messages")
    assert page.ids == ids and page.bodies == texts, (page.ids, page.bodies)
    assert page.complete, page.iq

    # Permissions survived too: the member gets in (and gets history), the outsider does not.
    b = await restart_xmpp(bob.username, bob.password, "after", plugins=MUC_PLUGINS)
    jb = await join_room(b, room, "bob", maxstanzas=2)
    assert [body_of(m) for m in jb.history] == texts[1:], [str(m) for m in jb.history]
    c = await restart_xmpp(carol.username, carol.password, "after", plugins=MUC_PLUGINS)
    err = await join_room_error(c, room, "carol")
    assert stanza_error(err) == ("auth", "forbidden"), err


# ---------------------------------------------------------------------------
# 1:1 archives
# ---------------------------------------------------------------------------


async def test_chat_archived_for_both_parties(make_user, xmpp):
    alice, bob = make_user("alice"), make_user("bob")
    a = await _connect(xmpp, alice)
    b = await _connect(xmpp, bob)
    b.send_presence()
    await b.sync()

    texts = [unique(f"chat-{i}-") for i in range(3)]
    b_mark = b.mark()
    a.send_message(mto=bob.jid, mbody=texts[0], mtype="chat")
    a.send_message(mto=bob.jid, mbody=texts[1], mtype="chat")
    # A client cannot assert a stanza id by the recipient's JID (XEP-0359 §4).
    _send_xml(a, bob.jid, "chat", f"<stanza-id xmlns='urn:xmpp:sid:0' by='{bob.jid}' id='forged'/>",
              body=texts[2])
    ids = []
    for text in texts:
        got = await b.wait_for(is_message_with_body(text, "chat"), f"chat {text}", since=b_mark)
        assert got.xml.get("from") == a.boundjid.full, got
        sids = [s for s in got.xml.findall(q("urn:xmpp:sid:0", "stanza-id")) if s.get("by") == bob.jid]
        assert len(sids) == 1 and sids[0].get("id") and sids[0].get("id") != "forged", got
        ids.append(sids[0].get("id"))
    assert len(set(ids)) == 3, ids

    # Alice's own archive (query without 'to'), filtered on bob.
    page = await mam_wait(a, None, lambda p: p.count == 3, "alice's 3 messages",
                          with_jid=bob.jid)
    assert page.bodies == texts and page.ids == ids, (page.bodies, page.ids)
    assert page.complete, page.iq
    for msg in page.messages:
        assert msg.get("to", "").split("/")[0] == bob.jid, ET.tostring(msg)
        assert msg.get("from", "").split("/")[0] == alice.jid, ET.tostring(msg)

    # Bob's archive has the same messages under the same ids.
    page = await mam_wait(b, None, lambda p: p.count == 3, "bob's 3 messages", with_jid=alice.jid)
    assert page.bodies == texts and page.ids == ids, (page.bodies, page.ids)

    # Filters: nobody else's conversation, and the whole archive is just these.
    other = await mam_query(a, None, with_jid=f"{unique('nobody')}@{DOMAIN}")
    assert other.error == (None, None) and other.ids == [] and other.count == 0, other.iq
    everything = await mam_query(a, None)
    assert everything.ids == ids, everything.ids
    first_two = await mam_query(a, None, with_jid=bob.jid, max=2)
    assert first_two.ids == ids[:2] and not first_two.complete, first_two.iq
    rest = await mam_query(a, None, with_jid=bob.jid, max=2, after=first_two.rsm("last"))
    assert rest.ids == ids[2:] and rest.complete, rest.iq
    # Results come from the user's own bare JID (or no 'from').
    for st in a.received:
        if st.xml.find(q(NS_MAM, "result")) is not None:
            assert st.xml.get("from") in (None, alice.jid), st


async def test_chat_to_a_missing_account_is_not_archived_for_it(http, make_user, xmpp):
    """A message to a local name nobody holds bounces and leaves nothing in that name's
    archive: whoever registers the name later starts with an empty archive."""
    alice = make_user("alice")
    a = await _connect(xmpp, alice)
    ghost = unique("ghost")
    ghost_jid = f"{ghost}@{DOMAIN}"
    texts = [unique("to-bare-"), unique("to-full-")]
    for to, text in zip((ghost_jid, f"{ghost_jid}/phone"), texts):
        a.send_message(mto=to, mbody=text, mtype="chat")
        err = await a.wait_for(is_error_from("message", ghost_jid, text), f"bounce of {text}")
        assert stanza_error(err)[1] == "service-unavailable", err

    password = "Pw" + unique("")
    status, body = http("POST", "/v1/accounts", json={"username": ghost, "password": password})
    assert status == 201, (status, body)
    g = await xmpp(ghost, password, "r", plugins=MUC_PLUGINS)
    page = await mam_query(g, None)
    assert page.error == (None, None) and page.count == 0 and page.ids == [], page.iq


async def test_chat_retraction_only_by_the_author(make_user, xmpp):
    """XEP-0424 in 1:1: bob cannot retract alice's message (forbidden, not delivered,
    both archives still hold it); alice can, and it leaves both archives."""
    alice, bob = make_user("alice"), make_user("bob")
    a = await _connect(xmpp, alice)
    b = await _connect(xmpp, bob)
    for c in (a, b):
        c.send_presence()
        await c.sync()

    text = unique("retract-me-")
    b_mark = b.mark()
    a.send_message(mto=bob.jid, mbody=text, mtype="chat")
    got = await b.wait_for(is_message_with_body(text, "chat"), "alice's message", since=b_mark)
    target = stanza_ids(got).get(bob.jid)
    assert target, got

    # bob retracts alice's message: refused, alice never sees it, nothing changes.
    a_mark, b_mark = a.mark(), b.mark()
    attempt = unique("bob-retracts-")
    _send_xml(b, alice.jid, "chat", f"<retract xmlns='{NS_RETRACT}' id='{target}'/>", body=attempt)
    err = await b.wait_for(is_error_from("message", alice.jid, attempt), "bob's refused retraction",
                           since=b_mark)
    assert stanza_error(err)[1] == "forbidden", err
    await a.assert_none(is_message_with_body(attempt), "bob's retraction", since=a_mark)
    for client, peer in ((a, bob.jid), (b, alice.jid)):
        page = await mam_query(client, None, with_jid=peer)
        assert page.ids == [target] and page.bodies == [text], (client.boundjid, page.iq)

    # alice retracts her own message: delivered, and gone from both archives.
    b_mark = b.mark()
    fallback = unique("alice-retracts-")
    _send_xml(a, bob.jid, "chat", f"<retract xmlns='{NS_RETRACT}' id='{target}'/>", body=fallback)
    retraction = await b.wait_for(is_message_with_body(fallback, "chat"), "alice's retraction",
                                  since=b_mark)
    assert retraction.xml.find(q(NS_RETRACT, "retract")).get("id") == target, retraction
    for client, peer in ((a, bob.jid), (b, alice.jid)):
        page = await mam_wait(client, None, lambda p: target not in p.ids and p.bodies == [fallback],
                              "the original gone, the retraction archived", with_jid=peer)
        assert page.count == 1, page.iq
