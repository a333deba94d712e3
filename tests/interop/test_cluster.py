"""A cluster of real ``waddle`` processes on loopback: three nodes form from seeds,
clients on different nodes log in with accounts created through another node's API,
exchange subscriptions, presence and messages, meet in a room, and a fourth node joins
and takes its share of the partitions.

Each node is its own process with its own data dir and ports (``WaddleProcess``), and
is stopped at the end of the module. Readiness is waited for (``GET /health`` turns 200
only once a node is a member and knows the ring; then ``GET /v1/cluster`` on every node
must agree), never slept for.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from typing import Iterator

import pytest
import xml.etree.ElementTree as ET

from conftest import WaddleProcess, _account_maker, _free_ports, _http_caller, _user_maker, _xmpp_connector
from xmpp_helpers import (
    RawStream,
    DOMAIN,
    add_member,
    check_permission,
    create_waddle,
    is_error_from,
    is_occupant_presence,
    join_room_error,
    muc_statuses,
    stanza_error,
    MUC_DOMAIN,
    MUC_PLUGINS,
    NS_DELAY,
    TIMEOUT,
    http_request,
    is_groupchat,
    is_message_with_body,
    is_presence,
    join_room,
    mam_query,
    q,
    stanza_kind,
    NS_SASL,
    subscribe_and_approve,
    unique,
)

SECRET = "interop-cluster-secret-0123456789"
ADMIN = "interop-cluster-admin-token"


class Cluster:
    def __init__(self) -> None:
        self.nodes: list[WaddleProcess] = []
        self.cluster_ports: list[int] = []

    def start_node(self, seed_index: int | None, extra: dict | None = None,
                   name: str = "cluster-node") -> WaddleProcess:
        node_id = len(self.nodes) + 1
        (port,) = _free_ports(1)
        env = {
            "WADDLE_SERVER_NODE_ID": str(node_id),
            "WADDLE_CLUSTER_LISTEN": f"127.0.0.1:{port}",
            "WADDLE_CLUSTER_SECRET": SECRET,
            "WADDLE_AUTH_ADMIN_TOKEN": ADMIN,
        }
        if seed_index is not None:
            env["WADDLE_CLUSTER_SEEDS"] = f"127.0.0.1:{self.cluster_ports[seed_index]}"
        env.update(extra or {})
        node = WaddleProcess(f"{name}{node_id}", env)
        self.nodes.append(node)
        self.cluster_ports.append(port)
        node.start()  # /health: the HTTP listener is up
        # /ready turns 200 once the node is a member that knows the ring and serves XMPP.
        deadline = time.monotonic() + 30
        while http_request(node.info.http_base, "GET", "/ready")[0] != 200:
            assert node.info.alive(), f"{node.name} exited while joining:\n{node.info.log_tail()}"
            assert time.monotonic() < deadline, f"{node.name} not ready:\n{node.info.log_tail()}"
            time.sleep(0.05)
        return node

    def status(self, i: int) -> dict:
        status, body = http_request(self.nodes[i].info.http_base, "GET", "/v1/cluster", bearer=ADMIN)
        assert status == 200, (status, body)
        return body

    def locate(self, i: int, jid: str) -> dict:
        status, body = http_request(self.nodes[i].info.http_base, "GET", f"/v1/cluster/locate?jid={jid}",
                                    bearer=ADMIN)
        assert status == 200, (status, body)
        return body

    def wait_converged(self, n: int, timeout: float = 30.0) -> list[dict]:
        """Every node sees `n` members up, one leader and the same ring epoch."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            views = [self.status(i) for i in range(len(self.nodes))]
            last = views
            ok = all(
                len(v["nodes"]) == n
                and all(node["state"] == "up" for node in v["nodes"])
                and v["leader"] is not None
                for v in views
            )
            epochs = {v["ring_epoch"] for v in views}
            leaders = {v["leader"] for v in views}
            owned = sum(node["partitions"] for node in views[0]["nodes"])
            every_node_owns = all(node["partitions"] > 0 for node in views[0]["nodes"])
            if ok and len(epochs) == 1 and len(leaders) == 1 and owned == 256 and every_node_owns:
                return views
            time.sleep(0.2)
        raise AssertionError(f"cluster of {n} did not converge: {json.dumps(last, indent=1)}")

    def stop_all(self) -> None:
        for node in reversed(self.nodes):
            node.teardown()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        c.start_node(None)
        c.start_node(0)
        c.start_node(0)
        c.wait_converged(3)
        yield c
    finally:
        c.stop_all()


@pytest.fixture
async def xmpp_on(cluster):
    """`await xmpp_on(i)(user, password, resource, plugins=...)`: a client of node i."""
    gens = {}

    def on(i: int):
        return connectors[i]

    connectors = {}
    for i, node in enumerate(cluster.nodes):
        gens[i] = _xmpp_connector(node.info)
        connectors[i] = await gens[i].__anext__()
    yield on
    for gen in gens.values():
        try:
            await gen.__anext__()
        except StopAsyncIteration:
            pass


def make_account_on(cluster: Cluster, i: int):
    return _account_maker(_http_caller(cluster.nodes[i].info))


def node_index(cluster: Cluster, node_id: str | int) -> int:
    return int(node_id) - 1


def other_node(cluster: Cluster, *avoid: int) -> int:
    for i in range(3):
        if i not in avoid:
            return i
    return 0


def test_three_nodes_form_a_cluster_from_seeds(cluster):
    views = cluster.wait_converged(3)
    for view in views:
        ids = sorted(n["id"] for n in view["nodes"])
        assert ids == [1, 2, 3], view
        roles = sorted(n["role"] for n in view["nodes"])
        assert roles == ["follower", "follower", "leader"], view
        # Bounded-load placement: 256 partitions over 3 nodes is 85 or 86 each.
        assert all(n["partitions"] in (85, 86) for n in view["nodes"]), view
        assert all(n["voter"] for n in view["nodes"]), view


def test_cluster_status_and_locate_from_the_cli(cluster):
    binary = str(cluster.nodes[0].binary)
    info = cluster.nodes[1].info
    out = subprocess.run([binary, "cluster", "status", "--json", "--http", f"127.0.0.1:{info.http_port}",
                          "--admin-token", ADMIN], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert sorted(n["id"] for n in status["nodes"]) == [1, 2, 3]
    assert all({"id", "state"} <= set(n) for n in status["nodes"])

    table = subprocess.run([binary, "cluster", "status", "--http", f"127.0.0.1:{info.http_port}",
                            "--admin-token", ADMIN], capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    assert "leader" in table.stdout and len(table.stdout.strip().splitlines()) == 5, table.stdout

    jid = f"{unique('loc')}@{DOMAIN}"
    located = subprocess.run([binary, "cluster", "locate", jid, "--http", f"127.0.0.1:{info.http_port}",
                              "--admin-token", ADMIN], capture_output=True, text=True, timeout=30)
    assert located.returncode == 0, located.stderr
    where = json.loads(located.stdout)
    assert where["jid"] == jid and where["owner"] in {"1", "2", "3"}, where
    # Every node gives the same answer.
    assert all(cluster.locate(i, jid)["owner"] == where["owner"] for i in range(3))

    denied = subprocess.run([binary, "cluster", "status", "--http", f"127.0.0.1:{info.http_port}",
                             "--admin-token", "wrong"], capture_output=True, text=True, timeout=30)
    assert denied.returncode != 0 and "401" in denied.stderr, denied.stderr


async def test_accounts_presence_and_chat_across_nodes(cluster, xmpp_on):
    # Accounts are created through node 1's API, wherever their partition lives.
    alice, apw = make_account_on(cluster, 0)("ca")
    bob, bpw = make_account_on(cluster, 0)("cb")
    # Each client connects to a node that does not own its user, and not to the other's.
    a_owner = node_index(cluster, cluster.locate(0, f"{alice}@{DOMAIN}")["owner"])
    b_owner = node_index(cluster, cluster.locate(0, f"{bob}@{DOMAIN}")["owner"])
    a_node = other_node(cluster, a_owner)
    b_node = other_node(cluster, b_owner, a_node)
    a = await xmpp_on(a_node)(alice, apw, "laptop", plugins=MUC_PLUGINS)
    b = await xmpp_on(b_node)(bob, bpw, "phone", plugins=MUC_PLUGINS)
    a.send_presence()
    b.send_presence()
    await a.wait_for(is_presence(f"{alice}@{DOMAIN}/laptop"), "own presence reflected")
    await b.wait_for(is_presence(f"{bob}@{DOMAIN}/phone"), "own presence reflected")

    # Subscriptions go through both owners' rosters; presence follows.
    mark = a.mark()
    await subscribe_and_approve(a, b)
    await a.wait_for(is_presence(f"{bob}@{DOMAIN}/phone"), "bob's presence after approval", since=mark)

    # Chat to a full JID and to a bare JID, both ways.
    body = unique("full")
    a.send_message(mto=f"{bob}@{DOMAIN}/phone", mbody=body, mtype="chat")
    await b.wait_for(is_message_with_body(body, "chat"), "message to a full JID across nodes")
    body = unique("bare")
    b.send_message(mto=f"{alice}@{DOMAIN}", mbody=body, mtype="chat")
    got = await a.wait_for(is_message_with_body(body, "chat"), "message to a bare JID across nodes")
    assert got["from"] == f"{bob}@{DOMAIN}/phone"

    # Both users' own archives hold the conversation, each kept by its user's owner.
    for client, expected in ((a, body), (b, body)):
        deadline = time.monotonic() + 5
        while True:
            page = await mam_query(client, None, with_jid=f"{alice}@{DOMAIN}" if client is b else f"{bob}@{DOMAIN}")
            if any(expected in ET_text(m) for m in page.messages):
                break
            assert time.monotonic() < deadline, f"{client.boundjid} archive lacks {expected}: {page.messages}"
            await asyncio.sleep(0.1)

    # A presence update reaches the subscriber on the other node.
    mark = a.mark()
    b.send_presence(pstatus="in a meeting")
    await a.wait_for(is_presence(f"{bob}@{DOMAIN}/phone"), "presence update across nodes", since=mark)

    # Offline storage at bob's owner: bob leaves, alice writes, bob logs in elsewhere.
    mark = a.mark()
    await b.close()
    await a.wait_for(is_presence(f"{bob}@{DOMAIN}/phone", "unavailable"), "bob went offline", since=mark)
    body = unique("offline")
    a.send_message(mto=f"{bob}@{DOMAIN}", mbody=body, mtype="chat")
    b2 = await xmpp_on(other_node(cluster, b_node))(bob, bpw, "tablet")
    b2.send_presence()
    offline = await b2.wait_for(is_message_with_body(body, "chat"), "offline message on another node")
    assert offline.xml.find(q(NS_DELAY, "delay")) is not None, offline


async def test_login_with_a_token_issued_by_another_node(cluster, xmpp_on):
    user, password = make_account_on(cluster, 2)("tok")
    session_status, session = http_request(cluster.nodes[0].info.http_base, "POST", "/auth/session",
                                           json={"username": user, "password": password})
    assert session_status in (200, 201), session
    token_status, token = http_request(cluster.nodes[1].info.http_base, "POST", "/auth/xmpp-token",
                                       bearer=session["token"])
    assert token_status in (200, 201), token
    client = await xmpp_on(2)(user, token["token"], "tok", sasl_mech="PLAIN")
    assert client.boundjid.bare == f"{user}@{DOMAIN}"


async def test_an_adhoc_room_with_members_on_every_node(cluster, xmpp_on):
    users = [make_account_on(cluster, i)("room") for i in range(3)]
    clients = []
    for i, (user, pw) in enumerate(users):
        clients.append(await xmpp_on(i)(user, pw, "pc", plugins=MUC_PLUGINS))
    room = f"{unique('clusterroom')}@{MUC_DOMAIN}"
    await join_room(clients[0], room, "n0", maxstanzas=0)
    # An instant room (XEP-0045 §10.1.2): unlocked for the others.
    await clients[0].iq_xml("set", "<query xmlns='http://jabber.org/protocol/muc#owner'>"
                                   "<x xmlns='jabber:x:data' type='submit'/></query>", to=room)
    for i, c in enumerate(clients[1:], start=1):
        await join_room(c, room, f"n{i}", maxstanzas=0)
    for i, sender in enumerate(clients):
        text = unique(f"from{i}")
        sender.send_message(mto=room, mbody=text, mtype="groupchat")
        for c in clients:
            await c.wait_for(is_groupchat(room, text, nick=f"n{i}"), f"groupchat from n{i}")
    # History of the room from a client on each node (the archive lives with the room).
    for c in clients:
        page = await mam_query(c, room, max=10)
        assert len(page.messages) >= 3, page.messages


async def test_a_waddle_made_on_one_node_is_used_from_all_and_revoked_everywhere(cluster, xmpp_on):
    http = [_http_caller(n.info) for n in cluster.nodes]
    users = [_user_maker(http[0], _account_maker(http[0]))(p) for p in ("wa", "wb", "wc")]
    alice, bob, carol = users
    # Created through node 1; its rooms live with the waddle's partition.
    w = create_waddle(http[0], alice)
    add_member(http[0], w, alice, bob)
    add_member(http[0], w, alice, carol)
    general = w.room("general")
    where = cluster.locate(1, general)
    assert where["owner"] in {"1", "2", "3"}, where
    # Every node knows the waddle and answers with the same channels.
    for h in http:
        status, body = h("GET", f"/v1/waddles/{w.id}", bearer=alice.token)
        assert status == 200 and body["id"] == w.id, (status, body)

    a = await xmpp_on(0)(alice.username, alice.password, "pc", plugins=MUC_PLUGINS)
    b = await xmpp_on(1)(bob.username, bob.password, "pc", plugins=MUC_PLUGINS)
    c = await xmpp_on(2)(carol.username, carol.password, "pc", plugins=MUC_PLUGINS)
    for client, nick in ((a, "alice"), (b, "bob"), (c, "carol")):
        await join_room(client, general, nick, maxstanzas=0)
    text = unique("hello-waddle-")
    b.send_message(mto=general, mbody=text, mtype="groupchat")
    for client in (a, b, c):
        await client.wait_for(is_groupchat(general, text, nick="bob"), "groupchat across nodes")
    for client in (a, c):
        page = await mam_query(client, general, max=10)
        assert any(text in ET_text(m) for m in page.messages), page.messages

    # Bob is removed through node 3's REST API: he is kicked at once, wherever the room
    # runs, and refused after.
    b_mark, a_mark = b.mark(), a.mark()
    status, body = http[2]("DELETE", f"/v1/waddles/{w.id}/members/{bob.username}", bearer=alice.token)
    assert status == 204, (status, body)
    gone = await b.wait_for(is_occupant_presence(general, "bob", "unavailable"), "bob kicked", since=b_mark)
    assert {110, 321} <= muc_statuses(gone), gone
    await a.wait_for(is_occupant_presence(general, "bob", "unavailable"), "bob's removal seen by alice",
                     since=a_mark)
    text = unique("after-removal-")
    b_mark = b.mark()
    b.send_message(mto=general, mbody=text, mtype="groupchat")
    bounced = await b.wait_for(is_error_from("message", general, text), "refused groupchat", since=b_mark)
    assert stanza_error(bounced)[1] in ("not-acceptable", "forbidden"), bounced
    err = await join_room_error(b, general, "bob")
    assert stanza_error(err) == ("auth", "forbidden"), err
    # Every node's permission check agrees within the documented bound (1 s).
    channel = f"channel:{w.channel('general')['id']}"
    for h in http:
        deadline = time.monotonic() + 1.0
        while check_permission(h, alice, channel, "view", user=bob.username):
            assert time.monotonic() < deadline, "a node still allows the removed member after 1 s"
            time.sleep(0.02)


def ET_text(el) -> str:
    return "".join(el.itertext())


async def test_a_restarted_node_rejoins_with_its_state(cluster, xmpp_on):
    http = [_http_caller(n.info) for n in cluster.nodes]
    owner = _user_maker(http[0], _account_maker(http[0]))("rst")
    w = create_waddle(http[0], owner)
    before = cluster.status(1)
    # The node that bootstrapped the cluster: it has no seeds, so had it lost its state it
    # would bootstrap a cluster of its own and never converge with the other two.
    node = cluster.nodes[0]
    node.restart()  # SIGTERM (must exit 0), then the same data dir and ports
    deadline = time.monotonic() + 30
    while http_request(node.info.http_base, "GET", "/ready")[0] != 200:
        assert time.monotonic() < deadline, f"restarted node not ready:\n{node.info.log_tail()}"
        time.sleep(0.05)
    views = cluster.wait_converged(3)
    # While it was away the others declared it down and moved its partitions; back, it
    # owns partitions again (wait_converged: every node owns some) in a newer ring.
    assert views[0]["ring_epoch"] >= before["ring_epoch"], (views[0], before)
    # Its control-plane state came back from its log and snapshot: the waddle made
    # through it before the restart is still there.
    status, body = http[0]("GET", f"/v1/waddles/{w.id}", bearer=owner.token)
    assert status == 200 and body["id"] == w.id, (status, body)
    # And it serves clients again, across nodes.
    user, pw = make_account_on(cluster, 0)("rst")
    peer, ppw = make_account_on(cluster, 2)("rst")
    c = await xmpp_on(0)(user, pw, "x")
    p = await xmpp_on(2)(peer, ppw, "y")
    body_text = unique("after-restart")
    p.send_message(mto=f"{user}@{DOMAIN}/x", mbody=body_text, mtype="chat")
    await c.wait_for(is_message_with_body(body_text, "chat"), "a message to the restarted node")


async def test_carbons_between_resources_on_different_nodes(cluster, xmpp_on):
    from test_carbons import CARBON_PLUGINS, enable, is_carbon
    alice, apw = make_account_on(cluster, 0)("carbx")
    bob, bpw = make_account_on(cluster, 0)("carby")
    owner = node_index(cluster, cluster.locate(0, f"{alice}@{DOMAIN}")["owner"])
    n1 = other_node(cluster, owner)
    n2 = other_node(cluster, owner, n1)
    a1 = await xmpp_on(n1)(alice, apw, "one", plugins=CARBON_PLUGINS)
    a2 = await xmpp_on(n2)(alice, apw, "two", plugins=CARBON_PLUGINS)
    b = await xmpp_on(owner)(bob, bpw, "b")
    for c in (a1, a2, b):
        c.send_presence()
    await enable(a2)
    # The owner tells a1's node that carbons are on (a hint, sent before the answer to
    # a2); a round trip of a1 through the owner orders that hint before what a1 sends
    # next. Without it, a message a1 sends within that millisecond may get no carbon.
    await a1.sync()
    body = unique("sent-carbon")
    a1.send_message(mto=f"{bob}@{DOMAIN}/b", mbody=body, mtype="chat")
    await b.wait_for(is_message_with_body(body, "chat"), "the message")
    await a2.wait_for(is_carbon("sent", body), "a sent carbon on the other node")
    body = unique("received-carbon")
    b.send_message(mto=f"{alice}@{DOMAIN}/one", mbody=body, mtype="chat")
    await a2.wait_for(is_carbon("received", body), "a received carbon on the other node")


NS_SM = "urn:xmpp:sm:3"
NS_MUC = "http://jabber.org/protocol/muc"


def _raw_on(cluster: Cluster, i: int) -> RawStream:
    info = cluster.nodes[i].info
    return RawStream(info.host, info.starttls_port)


def _chat_bodies(elements) -> list[str]:
    return [b.text for el in elements if el.tag == q("jabber:client", "message")
            for b in [el.find(q("jabber:client", "body"))] if b is not None and el.get("type") == "chat"]


async def test_a_live_session_resumes_on_another_node_with_its_state(cluster, xmpp_on):
    """XEP-0198 across nodes: the client's node is alive, but the client reconnects to
    another node and resumes there. The session's counters, its unacknowledged
    messages, its presence and its rooms move with it; nobody sees it leave."""
    alice, apw = make_account_on(cluster, 0)("smmove")
    bob, bpw = make_account_on(cluster, 0)("smpeer")
    a_node, b_node = 0, 1
    c_node = 2
    bob_client = await xmpp_on(b_node)(bob, bpw, "pc", plugins=MUC_PLUGINS)
    bob_client.send_presence()
    room = f"{unique('smroom')}@{MUC_DOMAIN}"
    await join_room(bob_client, room, "bob", maxstanzas=0)
    await bob_client.iq_xml("set", "<query xmlns='http://jabber.org/protocol/muc#owner'>"
                                   "<x xmlns='jabber:x:data' type='submit'/></query>", to=room)

    first = _raw_on(cluster, a_node)
    try:
        full = first.login(alice, apw, "phone")
        first.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
        enabled = first.read_until(lambda el: el.tag == q(NS_SM, "enabled"))
        previd = enabled.get("id")
        assert previd, ET.tostring(enabled)
        first.send("<presence/>")
        first.read_until(lambda el: el.tag == q("jabber:client", "presence") and el.get("from") == full)
        first.send(f"<presence to='{room}/alice'><x xmlns='{NS_MUC}'/></presence>")
        first.read_until(lambda el: el.tag == q("jabber:client", "presence") and el.get("from") == f"{room}/alice")
        await bob_client.wait_for(is_occupant_presence(room, "alice"), "alice in the room")
        # Stanzas alice's first connection read: own presence, bob's and alice's room
        # presence, and then the three messages below.
        tag = unique("moved-")
        for i in (1, 2, 3):
            bob_client.send_message(mto=full, mbody=f"{tag}{i}", mtype="chat")
        # The raw reads below block the event loop: let bob's client send first.
        await bob_client.sync()
        got = []
        while len(got) < 3:
            el = first.read_element()
            got += [b for b in _chat_bodies([el]) if b.startswith(tag)]
        assert got == [f"{tag}{i}" for i in (1, 2, 3)], got
        # Ask for the server's count (our presence and the room join: 2), and tell it we
        # handled everything up to the first message; the connection stays open.
        first.send(f"<r xmlns='{NS_SM}'/>")
        ack = first.read_until(lambda el: el.tag == q(NS_SM, "a"))
        assert ack.get("h") == "2", ET.tostring(ack)
        # Bob's room presence (maybe), alice's self-presence, her own presence, m1: we
        # acknowledge only what precedes m2 by counting what was read before it.
        after_enable = first.elements[first.elements.index(enabled) + 1:]
        stanzas = [el for el in after_enable
                   if el.tag in {q("jabber:client", t) for t in ("message", "presence", "iq")}]
        bodies = [(_chat_bodies([el]) or [None])[0] for el in stanzas]
        h = bodies.index(f"{tag}2")
        first.send(f"<a xmlns='{NS_SM}' h='{h}'/>")
        await asyncio.sleep(0.2)

        # The client moves to another node while its first connection is still up.
        second = _raw_on(cluster, c_node)
        try:
            second.open_stream()
            second.starttls()
            assert second.auth_plain(alice, apw).tag == q(NS_SASL, "success")
            second.open_stream()
            second.send(f"<resume xmlns='{NS_SM}' previd='{previd}' h='{h}'/>")
            resumed = second.read_until(lambda el: el.tag in (q(NS_SM, "resumed"), q(NS_SM, "failed")))
            assert resumed.tag == q(NS_SM, "resumed"), ET.tostring(resumed)
            assert (resumed.get("previd"), resumed.get("h")) == (previd, "2"), ET.tostring(resumed)
            # What the client had not acknowledged comes again, in order, once.
            again = []
            deadline = time.monotonic() + 5
            while len(again) < 2 and time.monotonic() < deadline:
                el = second.next_element(max(0.0, deadline - time.monotonic()))
                if el is None:
                    break
                again += [b for b in _chat_bodies([el]) if b.startswith(tag)]
            assert again == [f"{tag}2", f"{tag}3"], again
            # The first connection is let go.
            first.read_until_eof(timeout=5.0, send_close=False)

            # The session lives on: chat both ways, and the room still has alice in it
            # (no rejoin by the client; bob saw no unavailable from her).
            mark = bob_client.mark()
            bob_client.send_message(mto=full, mbody=f"{tag}4", mtype="chat")
            await bob_client.sync()
            second.read_until(lambda el: f"{tag}4" in _chat_bodies([el]))
            second.send(f"<message to='{bob}@{DOMAIN}/pc' type='chat'><body>{tag}back</body></message>")
            await bob_client.wait_for(is_message_with_body(f"{tag}back", "chat"), "a message from the moved session")
            text = unique("room-after-move")
            bob_client.send_message(mto=room, mbody=text, mtype="groupchat")
            await bob_client.sync()
            second.read_until(lambda el: el.get("type") == "groupchat"
                              and (el.find(q("jabber:client", "body")) is not None)
                              and el.find(q("jabber:client", "body")).text == text)
            gone = [p for p in bob_client.received[mark:]
                    if stanza_kind(p) == "presence" and p.xml.get("type") == "unavailable"
                    and p.xml.get("from") in (full, f"{room}/alice")]
            assert not gone, f"bob saw alice leave: {gone}"
            # Its counter continued from the first connection's.
            second.send(f"<r xmlns='{NS_SM}'/>")
            ack = second.read_until(lambda el: el.tag == q(NS_SM, "a"))
            assert ack.get("h") == "3", ET.tostring(ack)
        finally:
            second.close()
    finally:
        first.close()


async def test_a_fourth_node_joins_and_sessions_follow_the_ring(cluster, xmpp_on):
    # Sessions opened before the ring changes; a quarter of their users move to node 4.
    users = [make_account_on(cluster, i % 3)(f"ring{i}") for i in range(16)]
    sender_user, sender_pw = make_account_on(cluster, 0)("ringsender")
    clients = []
    for i, (user, pw) in enumerate(users):
        c = await xmpp_on(i % 3)(user, pw, "r", plugins=MUC_PLUGINS)
        c.send_presence()
        clients.append(c)
    sender = await xmpp_on(1)(sender_user, sender_pw, "s")
    # History in rooms, some of which will move to node 4: it is sent their logs as a
    # learner before it owns them, so it serves them without fetching their history.
    # (Three historians: one may join only 10 rooms a minute.)
    historians = []
    for i in range(3):
        user, pw = make_account_on(cluster, i)("ringhistorian")
        historians.append(await xmpp_on(i)(user, pw, "h", plugins=MUC_PLUGINS))
    # 24 rooms, 8 per historian: a quarter of the partitions move, so none of them moving
    # has a chance of (3/4)^24, about 0.1% (12 rooms left it at 3%, and it happened).
    rooms = [f"{unique('ringhistory')}@{MUC_DOMAIN}" for _ in range(24)]
    per_room = 8
    for n, room in enumerate(rooms):
        historian = historians[n % 3]
        await join_room(historian, room, "h", maxstanzas=0)
        for k in range(per_room):
            text = unique(f"history{k}")
            historian.send_message(mto=room, mbody=text, mtype="groupchat")
            await historian.wait_for(is_groupchat(room, text, nick="h"), "the reflection of a history message")
    before = cluster.status(0)["ring_epoch"]
    moved_before = [cluster.locate(0, f"{u}@{DOMAIN}")["owner"] for u, _ in users]

    cluster.start_node(1)
    views = cluster.wait_converged(4)
    with open(cluster.nodes[3].info.log_path, encoding="utf-8", errors="replace") as f:
        assert "cluster: caught up as a learner; up" in f.read(), "node 4 did not catch up as a learner first"
    fourth = next(n for n in views[0]["nodes"] if n["id"] == 4)
    # 256 over 4 is exactly 64 each; voters stay 3, so the new node is a learner.
    assert fourth["partitions"] == 64, fourth
    assert fourth["role"] == "learner" and not fourth["voter"], fourth
    assert views[0]["ring_epoch"] > before
    assert sorted(n["partitions"] for n in views[0]["nodes"]) == [64, 64, 64, 64]
    moved = [u for (u, _), old in zip(users, moved_before) if cluster.locate(0, f"{u}@{DOMAIN}")["owner"] == "4"]
    assert all(cluster.locate(3, f"{u}@{DOMAIN}")["owner"] == "4" for u in moved)

    # Every session is still reachable, moved users included: sessions re-announced
    # themselves to their users' new owner.
    for (user, _), client in zip(users, clients):
        body = unique("after-ring-change")
        sender.send_message(mto=f"{user}@{DOMAIN}/r", mbody=body, mtype="chat")
        await client.wait_for(is_message_with_body(body, "chat"), f"a message to {user} after the ring moved")
    assert moved, "no user moved to the new node (16 users, a quarter of the partitions moved)"

    # The rooms that moved to node 4 keep their history, and node 4 did not have to
    # fetch it when it took them over (a new owner without learners fetches every
    # entry of the partitions it takes, these rooms' messages included).
    moved_rooms = [room for room in rooms if cluster.locate(0, room)["owner"] == "4"]
    assert moved_rooms, "no room moved to the new node (24 rooms, a quarter of the partitions moved)"
    status, text = http_request(cluster.nodes[3].info.http_base, "GET", "/metrics", bearer=ADMIN)
    assert status == 200, (status, text)
    m = re.search(r"^waddle_replication_recovery_fetched_entries_total (\S+)$", text, re.M)
    assert m, text
    fetched = float(m.group(1))
    assert fetched < per_room * len(moved_rooms), (fetched, len(moved_rooms))
    for room in moved_rooms:
        page = await mam_query(historians[rooms.index(room) % 3], room, max=20)
        assert len(page.messages) == per_room, (room, page.messages)


async def test_two_nodes_over_tls():
    """cluster.tls: both nodes present the same certificate (node 1's, generated) and
    accept only a peer presenting it; they form a cluster and carry a chat."""
    c = Cluster()
    try:
        first = c.start_node(None, {"WADDLE_CLUSTER_TLS": "true"}, name="cluster-tls-node")
        cert_dir = f"{first.info.data_dir}/tls"
        second = c.start_node(0, {
            "WADDLE_CLUSTER_TLS": "true",
            "WADDLE_TLS_CERT_PATH": f"{cert_dir}/cert.pem",
            "WADDLE_TLS_KEY_PATH": f"{cert_dir}/key.pem",
        }, name="cluster-tls-node")
        c.wait_converged(2)
        first_log = re.sub(r"\x1b\[[0-9;]*m", "", open(first.log_path, encoding="utf-8", errors="replace").read())
        assert "tls=true" in first_log, first_log[-2000:]
        logs = open(second.log_path, encoding="utf-8", errors="replace").read()
        assert "inter-node session ready" in logs, logs[-2000:]

        alice, apw = make_account_on(c, 0)("tlsa")
        bob, bpw = make_account_on(c, 1)("tlsb")
        gens = [_xmpp_connector(n.info) for n in c.nodes]
        connect = [await g.__anext__() for g in gens]
        try:
            a = await connect[0](alice, apw, "a")
            b = await connect[1](bob, bpw, "b")
            body = unique("over-tls")
            a.send_message(mto=f"{bob}@{DOMAIN}/b", mbody=body, mtype="chat")
            await b.wait_for(is_message_with_body(body, "chat"), "a message between TLS-linked nodes")
        finally:
            for g in gens:
                try:
                    await g.__anext__()
                except StopAsyncIteration:
                    pass
    finally:
        c.stop_all()
