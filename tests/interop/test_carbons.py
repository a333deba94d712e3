"""XEP-0280 Message Carbons with slixmpp's xep_0280 plugin: alice has three
resources, A1 and A2 with carbons enabled and A3 without; bob talks to her.

Negative checks ("must not arrive") are followed or preceded by a positive
control on the same path where possible: copies to one session are written
in order, so once a later copy has arrived an earlier one would have too."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Callable, Optional

from xmpp_helpers import (
    DOMAIN,
    MUC_DOMAIN,
    MUC_PLUGINS,
    NS_CLIENT,
    NS_DISCO_INFO,
    NS_FORWARD,
    NS_MUC_OWNER,
    XmppClient,
    data_form,
    is_error_from,
    is_message_with_body,
    join_room,
    q,
    stanza_error,
    stanza_kind,
    unique,
)

NS_CARBONS = "urn:xmpp:carbons:2"
NS_HINTS = "urn:xmpp:hints"
CARBON_PLUGINS = ("xep_0280",)


def carbon_of(st: Any, kind: str) -> Optional[ET.Element]:
    """The forwarded message inside a ``kind`` ('sent' or 'received') carbon."""
    if stanza_kind(st) != "message":
        return None
    wrapper = st.xml.find(q(NS_CARBONS, kind))
    if wrapper is None:
        return None
    return wrapper.find(f"{q(NS_FORWARD, 'forwarded')}/{q(NS_CLIENT, 'message')}")


def is_carbon(kind: str, body: str) -> Callable[[Any], bool]:
    """A ``kind`` carbon whose forwarded message has ``body``."""
    def pred(st: Any) -> bool:
        inner = carbon_of(st, kind)
        if inner is None:
            return False
        b = inner.find(q(NS_CLIENT, "body"))
        return b is not None and b.text == body
    return pred


def is_any_carbon(body: str) -> Callable[[Any], bool]:
    return lambda st: is_carbon("sent", body)(st) or is_carbon("received", body)(st)


@dataclass
class Alice:
    """alice's three resources and bob."""
    user: str
    password: str
    a1: XmppClient
    a2: XmppClient
    a3: XmppClient
    bob: XmppClient
    # carbon events slixmpp's plugin raised (it only accepts carbons from the own bare JID)
    a2_events: list

    @property
    def bare(self) -> str:
        return f"{self.user}@{DOMAIN}"


def plugin_events(s: Alice) -> list[tuple[str, str]]:
    """(kind, body of the forwarded message) of each carbon event slixmpp raised on A2."""
    return [(kind, m[f"carbon_{kind}"]["body"]) for kind, m in s.a2_events]


async def enable(c: XmppClient) -> None:
    res = await c.plugin["xep_0280"].enable(timeout=10)
    assert res["type"] == "result", res


async def alice_and_bob(xmpp, make_account, *, a1_plugins: tuple[str, ...] = (),
                        bob_plugins: tuple[str, ...] = ()) -> Alice:
    (a, pa), (b, pb) = make_account("carba"), make_account("carbb")
    a1 = await xmpp(a, pa, "A1", plugins=CARBON_PLUGINS + a1_plugins)
    a2 = await xmpp(a, pa, "A2", plugins=CARBON_PLUGINS)
    a3 = await xmpp(a, pa, "A3", plugins=CARBON_PLUGINS)
    bob = await xmpp(b, pb, "B", plugins=bob_plugins)
    await enable(a1)
    await enable(a2)
    events: list = []
    a2.add_event_handler("carbon_received", lambda m: events.append(("received", m)))
    a2.add_event_handler("carbon_sent", lambda m: events.append(("sent", m)))
    for c in (a1, a2, a3, bob):
        c.send_presence()
    for c in (a1, a2, a3, bob):
        await c.sync()
    return Alice(a, pa, a1, a2, a3, bob, events)


async def test_server_disco_lists_carbons(xmpp, make_account):
    user, pw = make_account("carbd")
    c = await xmpp(user, pw, "d")
    res = await c.iq_xml("get", f"<query xmlns='{NS_DISCO_INFO}'/>", to=DOMAIN)
    features = {f.get("var") for f in res.xml.iter(q(NS_DISCO_INFO, "feature"))}
    assert NS_CARBONS in features, features


async def test_received_and_sent_carbons_reach_only_carbons_resources(xmpp, make_account):
    s = await alice_and_bob(xmpp, make_account)
    a1, a2, a3, bob = s.a1, s.a2, s.a3, s.bob

    # bob -> alice/A1: A1 gets the message, A2 a 'received' carbon, A3 nothing.
    body = unique("to-a1-")
    m1, m2, m3 = a1.mark(), a2.mark(), a3.mark()
    bob.send_message(mto=a1.boundjid.full, mbody=body, mtype="chat")
    await a1.wait_for(is_message_with_body(body, "chat"), "bob's chat on A1", since=m1)
    carbon = await a2.wait_for(is_carbon("received", body), "'received' carbon on A2", since=m2)
    assert carbon.xml.get("from") == s.bare, carbon
    assert carbon.xml.get("to") == a2.boundjid.full, carbon
    assert carbon.xml.get("type") == "chat", carbon
    inner = carbon_of(carbon, "received")
    assert inner.get("from") == bob.boundjid.full and inner.get("to") == a1.boundjid.full, carbon
    assert ("received", body) in plugin_events(s), f"slixmpp did not accept the carbon: {s.a2_events}"
    await a1.assert_none(is_any_carbon(body), "a carbon of a message A1 received itself", since=m1)
    await a3.assert_none(lambda st: is_any_carbon(body)(st) or is_message_with_body(body)(st),
                         "the message or a carbon on A3 (carbons not enabled)", since=m3)
    await a2.assert_none(is_message_with_body(body), "the original as well as the carbon on A2",
                         wait=0, since=m2)

    # alice/A1 -> bob: bob gets it, A2 a 'sent' carbon, A3 and A1 nothing.
    body = unique("from-a1-")
    m1, m2, m3, mb = a1.mark(), a2.mark(), a3.mark(), bob.mark()
    a1.send_message(mto=bob.boundjid.bare, mbody=body, mtype="chat")
    await bob.wait_for(is_message_with_body(body, "chat"), "A1's chat at bob", since=mb)
    carbon = await a2.wait_for(is_carbon("sent", body), "'sent' carbon on A2", since=m2)
    assert carbon.xml.get("from") == s.bare and carbon.xml.get("to") == a2.boundjid.full, carbon
    assert carbon.xml.get("type") == "chat", carbon
    inner = carbon_of(carbon, "sent")
    assert inner.get("from") == a1.boundjid.full and inner.get("to") == bob.boundjid.bare, carbon
    assert ("sent", body) in plugin_events(s), f"slixmpp did not accept the carbon: {s.a2_events}"
    await a3.assert_none(is_any_carbon(body), "a 'sent' carbon on A3 (carbons not enabled)", since=m3)
    await a1.assert_none(is_any_carbon(body), "a carbon of its own message on the sender", wait=0,
                         since=m1)

    # A3 (no carbons itself) sends: A1 and A2 both get a 'sent' carbon (XEP-0280 §8).
    body = unique("from-a3-")
    m1, m2 = a1.mark(), a2.mark()
    a3.send_message(mto=bob.boundjid.full, mbody=body, mtype="chat")
    await a1.wait_for(is_carbon("sent", body), "'sent' carbon of A3's chat on A1", since=m1)
    await a2.wait_for(is_carbon("sent", body), "'sent' carbon of A3's chat on A2", since=m2)

    # A normal message without a body is not an IM message: not copied.
    silent, control = unique("nobody-"), unique("control-")
    m2 = a2.mark()
    msg = bob.make_message(mto=a1.boundjid.full, mtype="normal")
    ET.SubElement(msg.xml, "{urn:example:carbons}note").text = silent
    msg.send()
    bob.send_message(mto=a1.boundjid.full, mbody=control, mtype="normal")
    await a2.wait_for(is_carbon("received", control), "carbon of a normal message with a body",
                      since=m2)
    await a2.assert_none(lambda st: carbon_of(st, "received") is not None
                         and carbon_of(st, "received").find("{urn:example:carbons}note") is not None,
                         "a carbon of a bodyless normal message", wait=0, since=m2)


async def test_private_and_no_copy_messages_are_not_copied(xmpp, make_account):
    s = await alice_and_bob(xmpp, make_account)
    a1, a2, bob = s.a1, s.a2, s.bob
    m1, m2, mb = a1.mark(), a2.mark(), bob.mark()

    def send(frm: XmppClient, to: str, body: str, *hints: tuple[str, str]) -> None:
        msg = frm.make_message(mto=to, mbody=body, mtype="chat")
        for ns, name in hints:
            ET.SubElement(msg.xml, q(ns, name))
        msg.send()

    private_in, nocopy_in = unique("priv-in-"), unique("nocopy-in-")
    private_out, both_out = unique("priv-out-"), unique("both-out-")
    send(bob, a1.boundjid.full, private_in, (NS_CARBONS, "private"))
    send(bob, a1.boundjid.full, nocopy_in, (NS_HINTS, "no-copy"))
    send(a1, bob.boundjid.full, private_out, (NS_CARBONS, "private"))
    send(a1, bob.boundjid.full, both_out, (NS_CARBONS, "private"), (NS_HINTS, "no-copy"))
    # Controls on both paths, sent after the hinted ones.
    control_in, control_out = unique("ctl-in-"), unique("ctl-out-")
    send(bob, a1.boundjid.full, control_in)
    send(a1, bob.boundjid.full, control_out)
    await a2.wait_for(is_carbon("received", control_in), "carbon of bob's plain chat", since=m2)
    await a2.wait_for(is_carbon("sent", control_out), "carbon of A1's plain chat", since=m2)

    for body in (private_in, nocopy_in):
        got = await a1.wait_for(is_message_with_body(body, "chat"), f"{body} on A1", since=m1)
        if body == private_in:
            # XEP-0280 1.0 no longer strips <private/> on delivery (§9, interoperability note).
            assert got.xml.find(q(NS_CARBONS, "private")) is not None, got
    for body in (private_out, both_out):
        await bob.wait_for(is_message_with_body(body, "chat"), f"{body} at bob", since=mb)
    for body in (private_in, nocopy_in, private_out, both_out):
        await a2.assert_none(is_any_carbon(body), f"a carbon of hinted message {body}", wait=0,
                             since=m2)
    await a2.assert_none(lambda st: any(is_any_carbon(b)(st) for b in
                                        (private_in, nocopy_in, private_out, both_out)),
                         "a late carbon of a hinted message", since=m2)


async def test_bare_jid_delivery_never_gives_both_message_and_carbon(xmpp, make_account):
    s = await alice_and_bob(xmpp, make_account)
    a1, a2, a3, bob = s.a1, s.a2, s.a3, s.bob
    # A1 (carbons) and A3 (none) are the most available; A2 (carbons) is below them.
    a1.send_presence(ppriority=5)
    a2.send_presence(ppriority=1)
    a3.send_presence(ppriority=5)
    for c in (a1, a2, a3):
        await c.sync()

    body = unique("bare-")
    m1, m2, m3 = a1.mark(), a2.mark(), a3.mark()
    bob.send_message(mto=s.bare, mbody=body, mtype="chat")
    await a1.wait_for(is_message_with_body(body, "chat"), "bare-JID chat on A1", since=m1)
    await a3.wait_for(is_message_with_body(body, "chat"), "bare-JID chat on A3", since=m3)
    carbon = await a2.wait_for(is_carbon("received", body), "'received' carbon on A2", since=m2)
    assert carbon_of(carbon, "received").get("to") == s.bare, carbon
    await a2.assert_none(is_message_with_body(body), "the original on A2 too", wait=0, since=m2)
    await a1.assert_none(is_any_carbon(body), "a carbon on A1, which got the message", since=m1)
    await a3.assert_none(is_any_carbon(body), "a carbon on A3", wait=0, since=m3)

    # All equally available: everyone gets the message and nobody a carbon.
    a2.send_presence(ppriority=5)
    await a2.sync()
    body = unique("bare-all-")
    marks = [c.mark() for c in (a1, a2, a3)]
    bob.send_message(mto=s.bare, mbody=body, mtype="chat")
    for c, m in zip((a1, a2, a3), marks):
        await c.wait_for(is_message_with_body(body, "chat"), f"bare-JID chat on {c.boundjid}", since=m)
    # Control: a message to A1 alone is copied to A2, after any carbon of the one above.
    control = unique("ctl-")
    bob.send_message(mto=a1.boundjid.full, mbody=control, mtype="chat")
    await a2.wait_for(is_carbon("received", control), "carbon of the control message", since=marks[1])
    for c, m in zip((a1, a2, a3), marks):
        await c.assert_none(is_any_carbon(body), f"a carbon on {c.boundjid}, which got the message",
                            wait=0, since=m)


async def test_disable_stops_copies_and_enable_to_own_bare_jid(xmpp, make_account):
    s = await alice_and_bob(xmpp, make_account)
    a1, a2, bob = s.a1, s.a2, s.bob
    res = await a2.plugin["xep_0280"].disable(timeout=10)
    assert res["type"] == "result", res
    # Disabling twice is not an error (XEP-0280 §10.1).
    res = await a2.plugin["xep_0280"].disable(timeout=10)
    assert res["type"] == "result", res

    m2 = a2.mark()
    off_in, off_out = unique("off-in-"), unique("off-out-")
    bob.send_message(mto=a1.boundjid.full, mbody=off_in, mtype="chat")
    a1.send_message(mto=bob.boundjid.full, mbody=off_out, mtype="chat")
    await a1.sync()
    await bob.sync()

    # Enabled again, with the IQ addressed to the own bare JID (as some clients do).
    res = await a2.iq_xml("set", f"<enable xmlns='{NS_CARBONS}'/>", to=s.bare)
    assert res["type"] == "result", res
    on_in = unique("on-in-")
    bob.send_message(mto=a1.boundjid.full, mbody=on_in, mtype="chat")
    await a2.wait_for(is_carbon("received", on_in), "carbon after enabling again", since=m2)
    await a2.assert_none(lambda st: is_any_carbon(off_in)(st) or is_any_carbon(off_out)(st),
                         "a carbon while carbons were disabled", since=m2)


async def test_a_new_session_starts_without_carbons(xmpp, make_account):
    s = await alice_and_bob(xmpp, make_account)
    a1, bob = s.a1, s.bob
    # A new session bound to A2 replaces the old one; carbons were the old session's.
    a2 = await xmpp(s.user, s.password, "A2", plugins=CARBON_PLUGINS)
    await s.a2.wait_disconnected()
    m2 = a2.mark()
    before = unique("before-enable-")
    bob.send_message(mto=a1.boundjid.full, mbody=before, mtype="chat")
    await a1.wait_for(is_message_with_body(before), "bob's chat on A1")
    await enable(a2)
    after = unique("after-enable-")
    bob.send_message(mto=a1.boundjid.full, mbody=after, mtype="chat")
    await a2.wait_for(is_carbon("received", after), "carbon after the new session enabled", since=m2)
    await a2.assert_none(is_any_carbon(before), "a carbon before the new session enabled carbons",
                         wait=0, since=m2)


async def test_bounces_of_copied_messages_are_copied(xmpp, make_account):
    s = await alice_and_bob(xmpp, make_account)
    a1, a2, a3 = s.a1, s.a2, s.a3
    nobody = f"{unique('nobody')}@{DOMAIN}"
    body = unique("to-nobody-")
    m1, m2, m3 = a1.mark(), a2.mark(), a3.mark()
    a1.send_message(mto=nobody, mbody=body, mtype="chat")
    err = await a1.wait_for(is_error_from("message", nobody, body), "the bounce on A1", since=m1)
    assert stanza_error(err)[1] == "service-unavailable", err
    await a2.wait_for(is_carbon("sent", body), "'sent' carbon of the message", since=m2)
    carbon = await a2.wait_for(lambda st: carbon_of(st, "received") is not None
                               and carbon_of(st, "received").get("type") == "error"
                               and carbon_of(st, "received").get("from") == nobody,
                               "'received' carbon of the bounce", since=m2)
    assert carbon.xml.get("type") == "error", carbon
    assert carbon_of(carbon, "received").get("to") == a1.boundjid.full, carbon
    await a1.assert_none(is_any_carbon(body), "a carbon of its own bounce on A1", since=m1)
    await a3.assert_none(lambda st: carbon_of(st, "received") is not None, "a carbon on A3",
                         wait=0, since=m3)


async def test_groupchat_is_not_copied_but_a_sent_private_message_is(xmpp, make_account):
    s = await alice_and_bob(xmpp, make_account, a1_plugins=MUC_PLUGINS, bob_plugins=MUC_PLUGINS)
    a1, a2, bob = s.a1, s.a2, s.bob
    room = f"{unique('carbons')}@{MUC_DOMAIN}"
    await join_room(a1, room, "alice")
    res = await a1.iq_xml("set", f"<query xmlns='{NS_MUC_OWNER}'>{data_form()}</query>", to=room)
    assert res["type"] == "result", res
    await join_room(bob, room, "bob")

    m1, m2, mb = a1.mark(), a2.mark(), bob.mark()
    mine, bobs = unique("gc-a1-"), unique("gc-bob-")
    a1.send_message(mto=room, mbody=mine, mtype="groupchat")
    bob.send_message(mto=room, mbody=bobs, mtype="groupchat")
    for body in (mine, bobs):
        await a1.wait_for(is_message_with_body(body, "groupchat"), f"groupchat {body} on A1",
                          since=m1)
        await bob.wait_for(is_message_with_body(body, "groupchat"), f"groupchat {body} at bob",
                           since=mb)

    # A private message to an occupant is copied (XEP-0280 §6.1); one from an occupant
    # is not (the room sends it to every session joined under the nick).
    pm_out, pm_in = unique("pm-out-"), unique("pm-in-")
    a1.send_message(mto=f"{room}/bob", mbody=pm_out, mtype="chat")
    await bob.wait_for(is_message_with_body(pm_out, "chat"), "alice's private message", since=mb)
    bob.send_message(mto=f"{room}/alice", mbody=pm_in, mtype="chat")
    await a1.wait_for(is_message_with_body(pm_in, "chat"), "bob's private message", since=m1)
    carbon = await a2.wait_for(is_carbon("sent", pm_out), "'sent' carbon of the private message",
                               since=m2)
    assert carbon_of(carbon, "sent").get("to") == f"{room}/bob", carbon
    # Control after everything above: a plain chat from bob is copied.
    control = unique("ctl-")
    bob.send_message(mto=a1.boundjid.full, mbody=control, mtype="chat")
    await a2.wait_for(is_carbon("received", control), "carbon of the control chat", since=m2)
    for body in (mine, bobs, pm_in):
        await a2.assert_none(is_any_carbon(body), f"a carbon of {body}", wait=0, since=m2)
    await a2.assert_none(lambda st: any(is_any_carbon(b)(st) for b in (mine, bobs, pm_in)),
                         "a late carbon of a groupchat or received private message", since=m2)
