"""Waddles over REST and their channel rooms over XMPP: the walk-through
(create, add a member, join, talk, outsiders refused), revocation, channel
deletion, route authentication and validation, and the OpenAPI document."""

from __future__ import annotations

import asyncio

import pytest

from xmpp_helpers import (
    owner_and_member_in,
    connect_muc,
    MUC_DOMAIN,
    NS_DATA,
    NS_DISCO_INFO,
    NS_MUC_USER,
    add_member,
    assert_error_envelope,
    check_permission,
    create_waddle,
    fresh_source_ip,
    is_error_from,
    is_groupchat,
    is_occupant_presence,
    join_room,
    join_room_error,
    muc_item,
    muc_statuses,
    muc_user_x,
    q,
    stanza_error,
    stanza_ids,
    unique,
)


_connect = connect_muc


# ---------------------------------------------------------------------------
# the walk-through
# ---------------------------------------------------------------------------


async def test_waddle_walk_members_talk_outsiders_refused(http, make_user, xmpp):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")

    w = create_waddle(http, alice)
    assert w.body["owner"] == alice.username, w.body
    kinds = {c["name"]: c["type"] for c in w.body["channels"]}
    assert kinds == {"general": "text", "announcements": "announcement"}, w.body
    for c in w.body["channels"]:
        assert c["room_jid"] == f"{c['id']}@{MUC_DOMAIN}", c
        assert c["waddle_id"] == w.id, c

    add_member(http, w, alice, bob)
    status, members = http("GET", f"/v1/waddles/{w.id}/members", bearer=alice.token)
    assert status == 200, (status, members)
    roles = {m["user"]: m["roles"] for m in members}
    assert "owner" in roles.get(alice.username, []), roles
    assert roles.get(bob.username) == ["member"], roles
    assert carol.username not in roles, roles

    room = w.room("general")
    a = await _connect(xmpp, alice)
    b = await _connect(xmpp, bob)

    ja = await join_room(a, room, "alice", maxstanzas=0)
    assert 110 in muc_statuses(ja.presence), ja.presence
    assert ja.presence["from"] == f"{room}/alice", ja.presence
    item = muc_item(ja.presence)
    assert (item.get("affiliation"), item.get("role")) == ("owner", "moderator"), ja.presence

    a_mark = a.mark()
    jb = await join_room(b, room, "bob")
    assert 110 in muc_statuses(jb.presence), jb.presence
    item = muc_item(jb.presence)
    assert (item.get("affiliation"), item.get("role")) == ("member", "participant"), jb.presence
    # The joiner is told about the occupant already there, and vice versa.
    await b.wait_for(is_occupant_presence(room, "alice"), "alice's occupant presence at bob")
    seen = await a.wait_for(is_occupant_presence(room, "bob"), "bob's occupant presence at alice",
                            since=a_mark)
    assert 110 not in muc_statuses(seen), seen
    assert muc_item(seen).get("role") == "participant", seen

    body = unique("hello-")
    b.send_message(mto=room, mbody=body, mtype="groupchat")
    at_a = await a.wait_for(is_groupchat(room, body, nick="bob"), "bob's groupchat at alice")
    at_b = await b.wait_for(is_groupchat(room, body, nick="bob"), "bob's own reflection")
    sid = stanza_ids(at_a).get(room)
    assert sid, f"reflection without <stanza-id by='{room}'>: {at_a}"
    assert stanza_ids(at_b).get(room) == sid, (at_a, at_b)

    # carol is not a member: refused entry, and her groupchat goes nowhere.
    c = await _connect(xmpp, carol)
    a_mark = a.mark()
    err = await join_room_error(c, room, "carol")
    assert stanza_error(err) == ("auth", "forbidden"), err
    c_body = unique("intruder-")
    c_mark = c.mark()
    c.send_message(mto=room, mbody=c_body, mtype="groupchat")
    bounced = await c.wait_for(is_error_from("message", room, c_body), "error for carol's groupchat",
                               since=c_mark)
    assert stanza_error(bounced)[1] in ("not-acceptable", "forbidden"), bounced
    await a.assert_none(lambda st: is_groupchat(room, c_body)(st)
                        or is_occupant_presence(room, "carol")(st),
                        "carol's presence or groupchat", since=a_mark)

    # The permission API agrees with what the room did.
    channel = f"channel:{w.channel('general')['id']}"
    assert check_permission(http, alice, channel, "view") is True
    assert check_permission(http, bob, channel, "view") is True
    assert check_permission(http, bob, channel, "send_message") is True
    assert check_permission(http, carol, channel, "view") is False
    assert check_permission(http, carol, channel, "send_message") is False
    assert check_permission(http, alice, channel, "view", user=carol.username) is False
    assert check_permission(http, alice, channel, "view", user=bob.username) is True
    assert check_permission(http, alice, f"waddle:{w.id}", "administer") is True
    assert check_permission(http, bob, f"waddle:{w.id}", "administer") is False
    # Only waddle administrators may ask about others.
    status, body = http("POST", "/v1/permissions/check", bearer=bob.token,
                        json={"object": channel, "permission": "view", "user": alice.username})
    assert status == 403, (status, body)
    assert_error_envelope(body)


async def test_removed_member_is_kicked_from_rooms_and_refused(http, make_user, xmpp):
    alice, bob = make_user("alice"), make_user("bob")
    w = create_waddle(http, alice)
    add_member(http, w, alice, bob)
    general, news = w.room("general"), w.room("announcements")
    a = await _connect(xmpp, alice)
    b = await _connect(xmpp, bob)
    await join_room(a, general, "alice", maxstanzas=0)
    await join_room(b, general, "bob", maxstanzas=0)
    await join_room(b, news, "bob", maxstanzas=0)
    a_mark, b_mark = a.mark(), b.mark()

    status, body = http("DELETE", f"/v1/waddles/{w.id}/members/{bob.username}", bearer=alice.token)
    assert status == 204, (status, body)

    # Every running room of the waddle re-evaluates: bob leaves with 321.
    for room in (general, news):
        gone = await b.wait_for(is_occupant_presence(room, "bob", "unavailable"),
                                f"bob's removal from {room}", since=b_mark)
        assert {110, 321} <= muc_statuses(gone), gone
        assert muc_item(gone).get("role") == "none", gone
    seen = await a.wait_for(is_occupant_presence(general, "bob", "unavailable"),
                            "bob's removal as seen by alice", since=a_mark)
    assert 321 in muc_statuses(seen) and 110 not in muc_statuses(seen), seen

    # His next groupchat is refused and reaches nobody.
    text = unique("after-removal-")
    b_mark = b.mark()
    b.send_message(mto=general, mbody=text, mtype="groupchat")
    bounced = await b.wait_for(is_error_from("message", general, text),
                               "error for the removed member's groupchat", since=b_mark)
    assert stanza_error(bounced)[1] in ("not-acceptable", "forbidden"), bounced
    await a.assert_none(is_groupchat(general, text), "the removed member's groupchat", since=a_mark)

    # A new join is refused.
    err = await join_room_error(b, general, "bob")
    assert stanza_error(err) == ("auth", "forbidden"), err

    # REST agrees: the waddle is invisible to bob now, and he holds no role.
    status, body = http("GET", f"/v1/waddles/{w.id}", bearer=bob.token)
    assert status == 404, (status, body)
    channel = f"channel:{w.channel('general')['id']}"
    assert check_permission(http, alice, channel, "view", user=bob.username) is False
    status, members = http("GET", f"/v1/waddles/{w.id}/members", bearer=alice.token)
    assert bob.username not in {m["user"] for m in members}, members


# ---------------------------------------------------------------------------
# channels: validation, permissions, deletion
# ---------------------------------------------------------------------------


def test_channel_creation_validation_and_permissions(http, make_user):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    w = create_waddle(http, alice)
    add_member(http, w, alice, bob)
    path = f"/v1/waddles/{w.id}/channels"

    for bad in ({"name": "Bad Name", "type": "text"}, {"name": "", "type": "text"},
                {"name": "x" * 33, "type": "text"}, {"name": "ok", "type": "voice"},
                {"name": "ok"}):
        status, body = http("POST", path, json=bad, bearer=alice.token)
        assert status == 400, (bad, status, body)
        assert_error_envelope(body)

    status, body = http("POST", path, json={"name": "general", "type": "text"}, bearer=alice.token)
    assert status == 409, (status, body)
    assert_error_envelope(body)
    assert body["error"]["code"] == "channel_exists", body

    status, ch = http("POST", path, json={"name": "dev-ops_2", "type": "text", "topic": "builds"},
                      bearer=alice.token)
    assert status == 201, (status, ch)
    assert ch["name"] == "dev-ops_2" and ch["type"] == "text" and ch["topic"] == "builds", ch
    assert ch["room_jid"] == f"{ch['id']}@{MUC_DOMAIN}", ch
    status, listed = http("GET", path, bearer=bob.token)
    assert status == 200 and ch["id"] in {c["id"] for c in listed}, (status, listed)
    status, got = http("GET", f"/v1/channels/{ch['id']}", bearer=bob.token)
    assert status == 200 and got["room_jid"] == ch["room_jid"], (status, got)

    # A plain member may see channels but not manage them.
    status, body = http("POST", path, json={"name": "bobs", "type": "text"}, bearer=bob.token)
    assert status == 403, (status, body)
    assert_error_envelope(body)
    for method, json in (("PATCH", {"topic": "mine"}), ("DELETE", None)):
        status, body = http(method, f"/v1/channels/{ch['id']}", json=json, bearer=bob.token)
        assert status == 403, (method, status, body)
        assert_error_envelope(body)
    # An outsider does not even learn that the waddle exists.
    status, body = http("POST", path, json={"name": "carols", "type": "text"}, bearer=carol.token)
    assert status == 404, (status, body)
    assert_error_envelope(body)
    status, body = http("GET", f"/v1/channels/{ch['id']}", bearer=carol.token)
    assert status == 404, (status, body)


def test_waddle_routes_require_a_bearer_session(http, make_user):
    alice, bob = make_user("alice"), make_user("bob")
    w = create_waddle(http, alice)
    add_member(http, w, alice, bob)
    ch = w.channel("general")["id"]
    routes = [
        ("POST", "/v1/waddles", {"name": "x"}),
        ("GET", "/v1/waddles", None),
        ("GET", f"/v1/waddles/{w.id}", None),
        ("PATCH", f"/v1/waddles/{w.id}", {"name": "renamed"}),
        ("DELETE", f"/v1/waddles/{w.id}", None),
        ("GET", f"/v1/waddles/{w.id}/members", None),
        ("POST", f"/v1/waddles/{w.id}/members", {"user": bob.username, "role": "admin"}),
        ("DELETE", f"/v1/waddles/{w.id}/members/{bob.username}", None),
        ("POST", f"/v1/waddles/{w.id}/channels", {"name": "sneaky", "type": "text"}),
        ("GET", f"/v1/waddles/{w.id}/channels", None),
        ("GET", f"/v1/channels/{ch}", None),
        ("PATCH", f"/v1/channels/{ch}", {"topic": "sneaky"}),
        ("DELETE", f"/v1/channels/{ch}", None),
        ("POST", "/v1/permissions/check", {"object": f"waddle:{w.id}", "permission": "view"}),
    ]
    for bearer in (None, "not-a-session-token", alice.password):
        for method, path, json in routes:
            status, body = http(method, path, json=json, bearer=bearer, source_ip=fresh_source_ip())
            assert status == 401, (bearer, method, path, status, body)
            assert_error_envelope(body)
            assert body["error"]["code"] == "unauthorized", body
    # Nothing happened.
    status, body = http("GET", f"/v1/waddles/{w.id}", bearer=alice.token)
    assert status == 200 and body["name"] == w.body["name"], (status, body)
    assert {c["name"] for c in body["channels"]} == {"general", "announcements"}, body
    status, members = http("GET", f"/v1/waddles/{w.id}/members", bearer=alice.token)
    assert {m["user"]: m["roles"] for m in members}.get(bob.username) == ["member"], members


def test_openapi_document(http):
    status, doc = http("GET", "/openapi.json")
    assert status == 200, (status, doc)
    assert isinstance(doc, dict), f"not a JSON object: {doc!r:.200}"
    assert str(doc.get("openapi", "")).startswith("3."), doc.get("openapi")
    paths = doc.get("paths")
    assert isinstance(paths, dict), doc.keys()
    for p in ("/v1/waddles", "/v1/permissions/check"):
        assert p in paths, sorted(paths)
    assert "post" in paths["/v1/waddles"] and "get" in paths["/v1/waddles"], paths["/v1/waddles"]
    assert any(p.startswith("/v1/channels/") for p in paths), sorted(paths)
    assert any(p.startswith("/v1/waddles/") and p.endswith("/members") for p in paths), sorted(paths)


async def _channel_with_occupants(http, make_user, xmpp):
    alice, bob = make_user("alice"), make_user("bob")
    w = create_waddle(http, alice)
    add_member(http, w, alice, bob)
    status, ch = http("POST", f"/v1/waddles/{w.id}/channels",
                      json={"name": unique("tmp"), "type": "text"}, bearer=alice.token)
    assert status == 201, (status, ch)
    room = ch["room_jid"]
    a = await _connect(xmpp, alice)
    b = await _connect(xmpp, bob)
    await join_room(a, room, "alice", maxstanzas=0)
    await join_room(b, room, "bob", maxstanzas=0)
    return alice, bob, ch, a, b


async def _delete_and_expect_destroy(http, alice, ch, clients):
    room = ch["room_jid"]
    marks = [(c, c.mark()) for c in clients]
    status, body = http("DELETE", f"/v1/channels/{ch['id']}", bearer=alice.token)
    assert status == 204, (status, body)
    for c, mark in marks:
        gone = await c.wait_for(
            lambda st: st.xml.get("type") == "unavailable" and st.xml.get("from", "").startswith(room + "/")
            and 110 in muc_statuses(st), f"{c.boundjid.bare}: the room's destroy presence", since=mark)
        x = muc_user_x(gone)
        assert x.find(q(NS_MUC_USER, "destroy")) is not None, f"no <destroy/>: {gone}"
        assert muc_item(gone).get("role") == "none", gone


async def test_deleting_a_channel_destroys_its_room(http, make_user, xmpp):
    alice, bob, ch, a, b = await _channel_with_occupants(http, make_user, xmpp)
    await _delete_and_expect_destroy(http, alice, ch, [a, b])
    status, body = http("GET", f"/v1/channels/{ch['id']}", bearer=alice.token)
    assert status == 404, (status, body)
    # Messages to the old room reach nobody.
    text = unique("into-the-void-")
    a_mark = a.mark()
    b.send_message(mto=ch["room_jid"], mbody=text, mtype="groupchat")
    await b.wait_for(is_error_from("message", ch["room_jid"], text), "error for a message to the "
                     "deleted room")
    await a.assert_none(is_groupchat(ch["room_jid"], text), "a message in the deleted room",
                        since=a_mark)


async def test_deleted_channel_room_cannot_be_rejoined(http, make_user, xmpp):
    alice, bob, ch, a, b = await _channel_with_occupants(http, make_user, xmpp)
    await _delete_and_expect_destroy(http, alice, ch, [a, b])
    await asyncio.sleep(0.3)  # let the destroyed room actor stop
    err = await join_room_error(b, ch["room_jid"], "bob")
    assert stanza_error(err)[1] == "gone", err


async def test_promotion_updates_the_occupant_role(http, make_user, xmpp):
    pair = await owner_and_member_in(http, make_user, xmpp, "general")
    alice, bob, w, room, a, b = pair.alice, pair.bob, pair.waddle, pair.room, pair.a, pair.b
    assert muc_item(pair.bob_join.presence).get("role") == "participant", pair.bob_join.presence

    a_mark, b_mark = a.mark(), b.mark()
    add_member(http, w, alice, bob, role="moderator")
    own = await b.wait_for(lambda st: is_occupant_presence(room, "bob")(st)
                           and muc_item(st).get("role") == "moderator" and 110 in muc_statuses(st),
                           "bob's own presence with the moderator role", since=b_mark)
    assert muc_item(own).get("affiliation") == "member", own
    await a.wait_for(lambda st: is_occupant_presence(room, "bob")(st)
                     and muc_item(st).get("role") == "moderator",
                     "bob's new role as seen by alice", since=a_mark)


async def test_deleting_a_waddle_destroys_all_its_rooms(http, make_user, xmpp):
    alice, bob = make_user("alice"), make_user("bob")
    w = create_waddle(http, alice)
    add_member(http, w, alice, bob)
    b = await _connect(xmpp, bob)
    rooms = (w.room("general"), w.room("announcements"))
    for room in rooms:
        await join_room(b, room, "bob", maxstanzas=0)
    b_mark = b.mark()
    status, body = http("DELETE", f"/v1/waddles/{w.id}", bearer=bob.token)
    assert status == 403, f"a plain member deleted the waddle: {status} {body!r}"
    status, body = http("DELETE", f"/v1/waddles/{w.id}", bearer=alice.token)
    assert status == 204, (status, body)
    for room in rooms:
        gone = await b.wait_for(is_occupant_presence(room, "bob", "unavailable"),
                                f"destroy presence of {room}", since=b_mark)
        assert muc_user_x(gone).find(q(NS_MUC_USER, "destroy")) is not None, gone
    status, body = http("GET", f"/v1/waddles/{w.id}", bearer=alice.token)
    assert status == 404, (status, body)


async def test_channel_patch_updates_the_room(http, make_user, xmpp):
    alice = make_user("alice")
    w = create_waddle(http, alice)
    ch = w.channel("general")
    a = await _connect(xmpp, alice)
    await join_room(a, ch["room_jid"], "alice", maxstanzas=0)  # the room is running
    new_name, topic = unique("lobby"), "Welcome, everyone"
    status, body = http("PATCH", f"/v1/channels/{ch['id']}", json={"name": new_name, "topic": topic},
                        bearer=alice.token)
    assert status == 200 and body["name"] == new_name and body["topic"] == topic, (status, body)

    info = await a.plugin["xep_0030"].get_info(jid=ch["room_jid"], timeout=10)
    names = {i.get("name") for i in info.xml.iter(q(NS_DISCO_INFO, "identity"))}
    assert names == {new_name}, f"room identity name after rename: {names}"
    fields = {f.get("var"): [v.text or "" for v in f.findall(q(NS_DATA, "value"))]
              for f in info.xml.iter(q(NS_DATA, "field"))}
    assert fields.get("muc#roominfo_description") == [topic], fields
