"""XEP-0352 Client State Indication: while a client is inactive the server holds back
presence updates and chat states (the newest per contact), delivers a message with a
body at once after what it held, and releases everything held on <active/>."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from xmpp_helpers import NS_CLIENT, is_message_with_body, is_presence, q, unique

NS_CSI = "urn:xmpp:csi:0"
NS_CHAT_STATES = "http://jabber.org/protocol/chatstates"


def _status(st) -> str | None:
    s = st.xml.find(q(NS_CLIENT, "status"))
    return s.text if s is not None else None


def _composing_from(jid: str):
    return lambda st: (st.xml.tag == q(NS_CLIENT, "message") and st.xml.get("from") == jid
                       and st.xml.find(q(NS_CHAT_STATES, "composing")) is not None)


async def test_inactive_client_gets_held_presence_and_chat_states_coalesced(make_user, xmpp):
    alice, bob = make_user("alice"), make_user("bob")
    a1 = await xmpp(alice.username, alice.password, "desk")
    a2 = await xmpp(alice.username, alice.password, "phone")
    b = await xmpp(bob.username, bob.password, "pc")
    a1.send_presence()
    a2.send_presence()
    await a2.wait_for(is_presence(a1.boundjid.full), "the other resource's presence")

    a2.send_raw(f"<inactive xmlns='{NS_CSI}'/>")
    await a2.sync()
    mark = a2.mark()
    tag = unique("csi-")
    for i in range(3):
        a1.send_presence(pstatus=f"{tag}{i}")
    await a1.wait_for(is_presence(a1.boundjid.full, status=f"{tag}2"), "a1's own last update")
    composing = b.make_message(mto=a2.boundjid.full, mtype="chat")
    ET.SubElement(composing.xml, q(NS_CHAT_STATES, "composing"))
    composing.send()
    await b.sync()
    await a2.assert_none(lambda st: is_presence(a1.boundjid.full)(st) or _composing_from(b.boundjid.full)(st),
                         "presence or a chat state while inactive", since=mark)

    # A message with a body is delivered at once, behind what was held: only the
    # newest presence of a1, and the chat state.
    b.send_message(mto=a2.boundjid.full, mbody=f"{tag}urgent", mtype="chat")
    await a2.wait_for(is_message_with_body(f"{tag}urgent", "chat"), "the urgent message", since=mark)
    got = a2.received[mark:]
    kinds = []
    for st in got:
        if is_presence(a1.boundjid.full)(st):
            kinds.append(("presence", _status(st)))
        elif _composing_from(b.boundjid.full)(st):
            kinds.append(("composing", None))
        elif is_message_with_body(f"{tag}urgent", "chat")(st):
            kinds.append(("urgent", None))
    assert kinds == [("presence", f"{tag}2"), ("composing", None), ("urgent", None)], kinds

    # Held again, then released by <active/>.
    mark = a2.mark()
    composing.send()
    await b.sync()
    await a2.assert_none(_composing_from(b.boundjid.full), "a chat state while inactive", since=mark)
    a2.send_raw(f"<active xmlns='{NS_CSI}'/>")
    await a2.wait_for(_composing_from(b.boundjid.full), "the held chat state on active", since=mark)

    # Active again: presence is delivered as it happens.
    mark = a2.mark()
    a1.send_presence(pstatus=f"{tag}back")
    await a2.wait_for(is_presence(a1.boundjid.full, status=f"{tag}back"), "live presence", since=mark)
