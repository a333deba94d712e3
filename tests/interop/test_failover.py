"""Failure detection and room failover on a cluster of real ``waddle`` processes.

A node that is killed (``kill -9``) or paused (``SIGSTOP``) stops answering the
others' pings; the control plane's leader marks it ``down`` and the next ring gives
its partitions to the survivors. The rooms it ran start on their new owners with
their occupants rebuilt from the nodes that hold the occupants' sessions, so clients
on surviving nodes stay in the room without rejoining and keep receiving messages,
and the room's archive is all there: each message was replicated to a majority of the
partition's replicas before it was reflected (with ``cluster.replicas = 1`` the message
acknowledged before the fault is missing, which is how this test was checked).
A paused node that wakes serves nothing it no longer owns: the ownership logs never
show two nodes serving one room at one epoch.

The cluster runs with short failure-detection timeouts (200 ms pings, down after
1 s); readiness and convergence are waited for, never slept for.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

import pytest

from test_cluster import ADMIN, Cluster, make_account_on, node_index, xmpp_on  # noqa: F401 (fixture)
from xmpp_helpers import (
    DOMAIN,
    NS_CLIENT,
    MUC_DOMAIN,
    MUC_PLUGINS,
    RawStream,
    http_request,
    is_groupchat,
    is_message_with_body,
    join_room,
    join_room_error,
    mam_query,
    q,
    stanza_error,
    unique,
)

NS_MUC_OWNER = "http://jabber.org/protocol/muc#owner"
NS_SM = "urn:xmpp:sm:3"
NS_MUC_ADMIN = "http://jabber.org/protocol/muc#admin"
NS_DATA = "jabber:x:data"


def room_config_form(name: str) -> str:
    """An owner's configuration: members-only, with a name."""
    fields = {"FORM_TYPE": "http://jabber.org/protocol/muc#roomconfig",
              "muc#roomconfig_roomname": name, "muc#roomconfig_membersonly": "1"}
    xml = "".join(f"<field var='{var}'><value>{value}</value></field>" for var, value in fields.items())
    return f"<query xmlns='{NS_MUC_OWNER}'><x xmlns='{NS_DATA}' type='submit'>{xml}</x></query>"

FAST = {"WADDLE_CLUSTER_HEARTBEAT_MS": "200", "WADDLE_CLUSTER_DOWN_AFTER_MS": "1000"}
# Generous for a loaded CI machine; the figures the chaos report records are the real
# measure of failover time.
FAILOVER_BUDGET_S = 20.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        c.start_node(None, FAST, name="failover-node")
        c.start_node(0, FAST, name="failover-node")
        c.start_node(0, FAST, name="failover-node")
        c.wait_converged(3)
        yield c
    finally:
        c.stop_all()


def node_states(cluster: Cluster, i: int) -> dict[int, str]:
    status, body = http_request(cluster.nodes[i].info.http_base, "GET", "/v1/cluster", bearer=ADMIN)
    assert status == 200, (status, body)
    return {n["id"]: n["state"] for n in body["nodes"]}


def wait_until(what: str, pred, timeout: float = FAILOVER_BUDGET_S) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def room_owned_by(cluster: Cluster, node_id: int, prefix: str) -> str:
    for _ in range(500):
        room = f"{unique(prefix)}@{MUC_DOMAIN}"
        if cluster.locate(0, room)["owner"] == str(node_id):
            return room
    raise AssertionError(f"no room name placed on node {node_id}")


def account_owned_by(cluster: Cluster, node_id: int, prefix: str) -> tuple[str, str]:
    """An account (made through node 1's API) whose user's partition node `node_id` owns."""
    for _ in range(500):
        username = unique(prefix)
        if cluster.locate(0, f"{username}@{DOMAIN}")["owner"] == str(node_id):
            password = "Pw" + unique("")
            status, body = http_request(cluster.nodes[0].info.http_base, "POST", "/v1/accounts",
                                        json={"username": username, "password": password})
            assert status == 201, (status, body)
            return username, password
    raise AssertionError(f"no user name placed on node {node_id}")


def ownership_events(cluster: Cluster) -> list[dict]:
    events = []
    for node in cluster.nodes:
        path = Path(node.info.data_dir) / "ownership.jsonl"
        if path.exists():
            events += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return events


def assert_one_owner_per_epoch(cluster: Cluster) -> None:
    served: dict[tuple[str, int], set[int]] = {}
    for e in ownership_events(cluster):
        if e["event"] == "serve":
            served.setdefault((e["key"], e["epoch"]), set()).add(e["node"])
    twice = {k: v for k, v in served.items() if len(v) > 1}
    assert served, "the nodes recorded no room ownership at all"
    assert not twice, f"rooms served by two nodes at one epoch: {twice}"


async def fail_and_check(cluster: Cluster, xmpp_on, fault: str) -> None:
    victim = 2  # node 3; clients sit on nodes 1 and 2
    victim_id = victim + 1
    # Bob's account, roster and archive live on the node that fails.
    users = [make_account_on(cluster, 0)("fo"), account_owned_by(cluster, victim_id, "fob")]
    a = await xmpp_on(0)(users[0][0], users[0][1], "a", plugins=MUC_PLUGINS)
    b = await xmpp_on(1)(users[1][0], users[1][1], "b", plugins=MUC_PLUGINS)
    bob_jid = f"{users[1][0]}@{DOMAIN}/b"
    chat_before = unique("chatbefore")
    a.send_message(mto=bob_jid, mbody=chat_before, mtype="chat")
    await b.wait_for(is_message_with_body(chat_before, "chat"), "a 1:1 message before the fault")
    room = room_owned_by(cluster, victim_id, f"failover{fault}")
    await join_room(a, room, "alice", maxstanzas=0)
    # A temporary room with a configuration and affiliations of its own: members-only,
    # alice its owner, bob a member.
    room_name = unique("Failover room ")
    configured = await a.iq_xml("set", room_config_form(room_name), to=room)
    assert configured["type"] == "result", configured
    made_member = await a.iq_xml("set", f"<query xmlns='{NS_MUC_ADMIN}'><item affiliation='member' "
                                        f"jid='{users[1][0]}@{DOMAIN}'/></query>", to=room)
    assert made_member["type"] == "result", made_member
    await join_room(b, room, "bob", maxstanzas=0)
    before = unique("before")
    a.send_message(mto=room, mbody=before, mtype="groupchat")
    await b.wait_for(is_groupchat(room, before, nick="alice"), "groupchat before the fault")
    epoch = cluster.status(0)["ring_epoch"]

    proc = cluster.nodes[victim].info.proc
    if fault == "kill":
        proc.kill()
        proc.wait(timeout=10)
    else:
        proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(f"node {victim_id} marked down",
                   lambda: all(node_states(cluster, i).get(victim_id) == "down" for i in (0, 1)))
        wait_until("a ring without the failed node",
                   lambda: all(cluster.status(i)["ring_epoch"] > epoch for i in (0, 1))
                   and cluster.locate(0, room)["owner"] != str(victim_id))
        # Nobody rejoined: the room on its new owner knows both occupants.
        after = unique("after")
        a.send_message(mto=room, mbody=after, mtype="groupchat")
        await a.wait_for(is_groupchat(room, after, nick="alice"), "the sender's reflection after failover",
                         timeout=FAILOVER_BUDGET_S)
        await b.wait_for(is_groupchat(room, after, nick="alice"), "the other occupant's copy after failover")
        reply = unique("reply")
        b.send_message(mto=room, mbody=reply, mtype="groupchat")
        await a.wait_for(is_groupchat(room, reply, nick="bob"), "a reply after failover")
        # The room came back as it was, not as a new open room without an owner: it is
        # still members-only (a stranger is refused), alice still owns it, its name kept.
        stranger, stranger_pw = make_account_on(cluster, 0)("fostranger")
        c = await xmpp_on(1)(stranger, stranger_pw, "c", plugins=MUC_PLUGINS)
        refused = await join_room_error(c, room, "stranger")
        assert stanza_error(refused)[1] == "registration-required", refused
        form = await a.iq_xml("get", f"<query xmlns='{NS_MUC_OWNER}'/>", to=room)
        assert form["type"] == "result", form
        values = {f.get("var"): [v.text for v in f.iter(q(NS_DATA, "value"))]
                  for f in form.xml.iter(q(NS_DATA, "field"))}
        assert values.get("muc#roomconfig_roomname") == [room_name], values
        assert values.get("muc#roomconfig_membersonly") in (["1"], ["true"]), values
        # The room's archive came with it: what was acknowledged before the fault was
        # replicated, and the new owner holds it while the old one is gone.
        page = await mam_query(b, room, max=50)
        bodies = page.bodies
        assert bodies.count(before) == 1 and bodies.count(after) == 1 and bodies.count(reply) == 1, bodies
        # Bob's own data moved too: his archive (at his user's new owner) has the 1:1
        # message, a new message to him is archived, and he can log in again.
        chat_after = unique("chatafter")
        a.send_message(mto=bob_jid, mbody=chat_after, mtype="chat")
        await b.wait_for(is_message_with_body(chat_after, "chat"), "a 1:1 message after failover")
        own = await mam_query(b, None, max=50)
        assert own.bodies.count(chat_before) == 1 and own.bodies.count(chat_after) == 1, own.bodies
        again_b = await xmpp_on(0)(users[1][0], users[1][1], "b2")
        assert again_b is not None
    finally:
        if fault == "kill":
            cluster.nodes[victim].start()
        else:
            proc.send_signal(signal.SIGCONT)
    wait_until(f"node {victim_id} up again",
               lambda: all(node_states(cluster, i).get(victim_id) == "up" for i in range(3)), timeout=60)
    cluster.wait_converged(3)
    # The room still works once the node is back (wherever the ring puts it now).
    again = unique("again")
    a.send_message(mto=room, mbody=again, mtype="groupchat")
    await b.wait_for(is_groupchat(room, again, nick="alice"), "groupchat once the node is back",
                     timeout=FAILOVER_BUDGET_S)
    assert_one_owner_per_epoch(cluster)


async def test_a_killed_node_is_marked_down_and_its_room_keeps_its_occupants(cluster, xmpp_on):
    await fail_and_check(cluster, xmpp_on, "kill")


async def test_a_paused_node_is_marked_down_and_serves_nothing_when_it_wakes(cluster, xmpp_on):
    await fail_and_check(cluster, xmpp_on, "stop")


async def test_a_refused_message_is_answered_before_the_acknowledgement_that_covers_it(cluster):
    """A 1:1 message whose recipient's owner does not answer (paused) is refused with
    ``recipient-unavailable``; the client asked for an acknowledgement in the same write.
    The error must reach it before the ``<a/>`` whose count covers the message: a client
    that reads the ``<a/>`` first (and loses the connection before the error) takes the
    message as kept. The chaos soak lost two messages that way, when a node cut off from
    the others refused them while closing its client streams."""
    cluster.wait_converged(3)
    victim = 2
    sender, sender_pw = make_account_on(cluster, 0)("ackorder")
    recipient, _ = account_owned_by(cluster, victim + 1, "ackorderb")
    info = cluster.nodes[0].info
    raw = RawStream(info.host, info.starttls_port)
    proc = cluster.nodes[victim].info.proc
    try:
        raw.login(sender, sender_pw, "r")
        raw.send(f"<enable xmlns='{NS_SM}'/>")
        raw.read_until(lambda el: el.tag == q(NS_SM, "enabled"))
        proc.send_signal(signal.SIGSTOP)
        raw.send(f"<message to='{recipient}@{DOMAIN}' type='chat' id='refused1'><body>kept?</body></message>"
                 f"<r xmlns='{NS_SM}'/>")
        seen = []
        while not seen or seen[-1].tag != q(NS_SM, "a"):
            seen.append(raw.read_element(timeout=FAILOVER_BUDGET_S))
        ack = seen[-1]
        assert ack.get("h") == "1", ET.tostring(ack)
        errors = [el for el in seen if el.tag == q(NS_CLIENT, "message") and el.get("id") == "refused1"]
        assert [el.get("type") for el in errors] == ["error"], [ET.tostring(el) for el in seen]
        assert stanza_error(errors[0]) == ("wait", "recipient-unavailable"), ET.tostring(errors[0])
    finally:
        proc.send_signal(signal.SIGCONT)
        raw.close()
    wait_until(f"node {victim + 1} up again",
               lambda: all(node_states(cluster, i).get(victim + 1) == "up" for i in range(3)), timeout=60)
    cluster.wait_converged(3)


async def test_a_paused_leader_wakes_without_judging_the_others(cluster, xmpp_on):
    """The control plane's leader is paused long enough for the others to elect another
    and mark it down. When it wakes it still believes it leads and has heard nobody for
    the length of the pause: it must not declare the others down (it judges only while
    it holds the lease, which a pause expires)."""
    cluster.wait_converged(3)
    leader_id = cluster.status(0)["leader"]
    paused = node_index(cluster, leader_id)
    others = [i for i in range(3) if i != paused]
    proc = cluster.nodes[paused].info.proc
    proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(f"node {leader_id} marked down by a new leader",
                   lambda: all(node_states(cluster, i).get(leader_id) == "down" for i in others))
        time.sleep(1.0)  # paused well past down_after: its lease and everyone's silence
    finally:
        proc.send_signal(signal.SIGCONT)
    wrongly_down = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        for i in others:
            states = node_states(cluster, i)
            wrongly_down += [(i, n) for n, st in states.items() if st == "down" and n != leader_id]
        time.sleep(0.05)
    assert not wrongly_down, f"members declared down after the old leader woke: {wrongly_down}"
    wait_until(f"node {leader_id} up again",
               lambda: all(node_states(cluster, i).get(leader_id) == "up" for i in range(3)), timeout=60)
    cluster.wait_converged(3)


async def test_a_node_drained_by_leave_hands_over_and_exits(cluster, xmpp_on):
    """`POST /v1/cluster/leave` (what `waddle cluster leave` calls) drains the control
    plane's leader: its partitions go to the others with their data, its clients are
    told to go (`system-shutdown`), it hands the leadership on and exits cleanly; the
    room it ran keeps its history and the occupant on another node stays in it. Runs
    last: the cluster has two nodes after."""
    cluster.wait_converged(3)
    leaver_id = int(cluster.status(0)["leader"])
    leaver = node_index(cluster, leaver_id)
    stay, other = [i for i in range(3) if i != leaver]
    users = [make_account_on(cluster, stay)("dr"), account_owned_by(cluster, leaver_id, "drb")]
    a = await xmpp_on(stay)(users[0][0], users[0][1], "a", plugins=MUC_PLUGINS)
    b = await xmpp_on(leaver)(users[1][0], users[1][1], "b", plugins=MUC_PLUGINS)
    room = room_owned_by(cluster, leaver_id, "drain")
    await join_room(a, room, "alice", maxstanzas=0)
    await a.iq_xml("set", "<query xmlns='http://jabber.org/protocol/muc#owner'>"
                          "<x xmlns='jabber:x:data' type='submit'/></query>", to=room)
    await join_room(b, room, "bob", maxstanzas=0)
    before = unique("beforedrain")
    b.send_message(mto=room, mbody=before, mtype="groupchat")
    await a.wait_for(is_groupchat(room, before, nick="bob"), "groupchat before the drain")

    node = cluster.nodes[leaver]
    status, body = http_request(node.info.http_base, "POST", "/v1/cluster/leave", bearer=ADMIN, timeout=90)
    assert status == 200 and body["left"] is True, (status, body)
    wait_until("the drained node exits", lambda: node.info.proc.poll() is not None, timeout=30)
    assert node.info.proc.returncode == 0, node.info.log_tail()
    deadline = time.monotonic() + 10
    while "system-shutdown" not in b.stream_errors and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert "system-shutdown" in b.stream_errors, b.stream_errors
    node.stop()
    cluster.nodes.pop(leaver)
    wait_until("the others forget the node",
               lambda: all(leaver_id not in node_states(cluster, i) for i in range(2)), timeout=30)
    cluster.wait_converged(2)

    # Bob comes back through another node: his account came along, and so did the room.
    b2 = await xmpp_on(other)(users[1][0], users[1][1], "b2", plugins=MUC_PLUGINS)
    await join_room(b2, room, "bob", maxstanzas=0)
    after = unique("afterdrain")
    a.send_message(mto=room, mbody=after, mtype="groupchat")
    await b2.wait_for(is_groupchat(room, after, nick="alice"), "groupchat after the drain")
    page = await mam_query(b2, room, max=50)
    assert page.bodies.count(before) == 1 and page.bodies.count(after) == 1, page.bodies
    assert_one_owner_per_epoch(cluster)

    # A member restarted on its data dir whose configured seed has left the cluster
    # meanwhile comes back through the members its own log knows.
    restarted = cluster.nodes[1]
    restarted.info.proc.kill()
    restarted.info.proc.wait(timeout=10)
    restarted.extra_env["WADDLE_CLUSTER_SEEDS"] = f"127.0.0.1:{cluster.cluster_ports[leaver]}"
    restarted.start()
    wait_until("the restarted node is ready",
               lambda: http_request(restarted.info.http_base, "GET", "/ready")[0] == 200, timeout=30)
    cluster.wait_converged(2)
