"""XEP-0198 Stream Management: enabling, the counters on both sides, acknowledgements
the server asks for, resumption after a dropped socket with nothing lost or
duplicated, refusals of unknown ids, and unacknowledged messages going to offline
storage when a session is not resumed in time.

The wire-level cases use raw streams so that every count is exact; one case drives
slixmpp's own XEP-0198 implementation through a real resumption."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET

from xmpp_helpers import (
    DOMAIN,
    NS_CLIENT,
    NS_DELAY,
    NS_SASL,
    NS_STANZAS_ERR,
    NS_STREAM,
    NS_STREAMS_ERR,
    RawStream,
    is_message_with_body,
    q,
    unique,
)

NS_SM = "urn:xmpp:sm:3"
STANZA_TAGS = {q(NS_CLIENT, t) for t in ("message", "presence", "iq")}


class SmClient:
    """A raw stream that counts the stanzas it reads (its XEP-0198 ``h``)."""

    def __init__(self, raw: RawStream):
        self.raw = raw
        self.handled = 0

    def read(self, timeout: float | None = None) -> ET.Element:
        el = self.raw.read_element(timeout)
        if el.tag in STANZA_TAGS:
            self.handled += 1
        return el

    def read_until(self, pred, what: str, timeout: float = 10.0) -> ET.Element:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"timed out waiting for {what}; {self.raw.describe()}"
            el = self.read(remaining)
            if pred(el):
                return el

    def quiet(self, seconds: float) -> list[ET.Element]:
        """Everything that arrives within ``seconds``."""
        got = []
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            el = self.raw.next_element(remaining)
            if el is None:
                break
            if el.tag in STANZA_TAGS:
                self.handled += 1
            got.append(el)
        return got


def _is(tag_ns: str, name: str):
    return lambda el: el.tag == q(tag_ns, name)


def _body(el: ET.Element) -> str | None:
    b = el.find(q(NS_CLIENT, "body"))
    return b.text if b is not None else None


def _is_message(body: str):
    return lambda el: el.tag == q(NS_CLIENT, "message") and _body(el) == body


def _authenticate(raw: RawStream, username: str, password: str) -> ET.Element:
    """Header, STARTTLS, PLAIN, restart: the post-authentication features."""
    raw.open_stream()
    raw.starttls()
    result = raw.auth_plain(username, password)
    assert result.tag == q(NS_SASL, "success"), ET.tostring(result)
    return raw.open_stream()


def _enable(sm: SmClient, resume: bool = True, max_secs: int | None = None) -> ET.Element:
    attrs = " resume='true'" if resume else ""
    if max_secs is not None:
        attrs += f" max='{max_secs}'"
    sm.raw.send(f"<enable xmlns='{NS_SM}'{attrs}/>")
    return sm.read_until(_is(NS_SM, "enabled"), "<enabled/>")


def _send_chat(raw: RawStream, to: str, body: str) -> None:
    raw.send(f"<message to='{to}' type='chat'><body>{body}</body></message>")


async def test_enable_counts_acks_and_server_requests(make_user, raw):
    alice, bob = make_user("alice"), make_user("bob")
    a = SmClient(raw())
    full = a.raw.login(alice.username, alice.password, "sm")
    enabled = _enable(a)
    assert enabled.get("resume") == "true" and enabled.get("id"), ET.tostring(enabled)
    assert enabled.get("max") == "300", ET.tostring(enabled)

    # Three stanzas from the client: the server's h says three.
    a.raw.send("<presence/>")
    a.read_until(lambda el: el.tag == q(NS_CLIENT, "presence") and el.get("from") == full,
                 "own presence")
    for i in range(2):
        a.raw.send(f"<iq type='get' id='p{i}'><ping xmlns='urn:xmpp:ping'/></iq>")
    a.raw.send(f"<r xmlns='{NS_SM}'/>")
    ack = a.read_until(_is(NS_SM, "a"), "<a/>")
    assert ack.get("h") == "3", ET.tostring(ack)

    # Under load the server asks: it sends <r/> after ten stanzas (config default;
    # three went out above). Nine messages stay under bob's per-contact rate limit.
    b = raw()
    b.login(bob.username, bob.password, "pc")
    tag = unique("load-")
    for i in range(9):
        _send_chat(b, full, f"{tag}{i}")
    seen, requests = set(), 0
    while len(seen) < 9:
        el = a.read()
        if el.tag == q(NS_SM, "r"):
            requests += 1
            a.raw.send(f"<a xmlns='{NS_SM}' h='{a.handled}'/>")
        elif el.tag == q(NS_CLIENT, "message") and (_body(el) or "").startswith(tag):
            seen.add(_body(el))
    assert requests >= 1, "the server never asked for an acknowledgement"

    # An acknowledgement of more than was sent ends the stream with the XEP's error.
    a.raw.send(f"<a xmlns='{NS_SM}' h='{a.handled + 100}'/>")
    err = a.read_until(_is(NS_STREAM, "error"), "stream error")
    assert err.find(q(NS_STREAMS_ERR, "undefined-condition")) is not None, ET.tostring(err)
    assert err.find(q(NS_SM, "handled-count-too-high")) is not None, ET.tostring(err)


async def test_resume_after_a_dropped_socket_resends_unacked_in_order_once(make_user, raw):
    alice, bob = make_user("alice"), make_user("bob")
    a1 = SmClient(raw())
    full = a1.raw.login(alice.username, alice.password, "phone")
    previd = _enable(a1).get("id")
    a1.raw.send("<presence/>")
    a1.read_until(lambda el: el.tag == q(NS_CLIENT, "presence") and el.get("from") == full,
                  "own presence")
    b = raw()
    bob_full = b.login(bob.username, bob.password, "pc")
    tag = unique("resume-")
    for i in (1, 2, 3):
        _send_chat(b, full, f"{tag}{i}")
    for i in (1, 2, 3):
        a1.read_until(_is_message(f"{tag}{i}"), f"m{i}")
    # The client acknowledged its own presence and m1, handled m2 and m3 but the
    # acknowledgement never left: the socket dies without a stream close.
    a1.raw.send(f"<a xmlns='{NS_SM}' h='2'/>")
    a1.raw.close()
    for i in (4, 5):
        _send_chat(b, full, f"{tag}{i}")

    a2 = SmClient(raw())
    feats = _authenticate(a2.raw, alice.username, alice.password)
    assert feats.find(q(NS_SM, "sm")) is not None, ET.tostring(feats)
    a2.raw.send(f"<resume xmlns='{NS_SM}' previd='{previd}' h='2'/>")
    resumed = a2.read_until(lambda el: el.tag in (q(NS_SM, "resumed"), q(NS_SM, "failed")),
                            "<resumed/>")
    assert resumed.tag == q(NS_SM, "resumed"), ET.tostring(resumed)
    # The server handled one stanza of ours (the presence).
    assert (resumed.get("previd"), resumed.get("h")) == (previd, "1"), ET.tostring(resumed)

    got = [_body(el) for el in a2.quiet(2.0) if el.tag == q(NS_CLIENT, "message")]
    assert got == [f"{tag}{i}" for i in (2, 3, 4, 5)], got

    # The resumed session is the same session: it still sends and receives.
    _send_chat(b, full, f"{tag}6")
    a2.read_until(_is_message(f"{tag}6"), "m6 after resumption")
    _send_chat(a2.raw, bob_full, f"{tag}back")
    b.read_until(lambda el: el.tag == q(NS_CLIENT, "message") and _body(el) == f"{tag}back")
    a2.raw.send(f"<r xmlns='{NS_SM}'/>")
    ack = a2.read_until(_is(NS_SM, "a"), "<a/>")
    assert ack.get("h") == "2", ET.tostring(ack)


async def test_unknown_or_foreign_previd_is_item_not_found_and_bind_still_works(make_user, raw):
    alice, bob = make_user("alice"), make_user("bob")
    # bob has a live resumable session; alice may not take it over.
    b = SmClient(raw())
    b.raw.login(bob.username, bob.password, "pc")
    bob_previd = _enable(b).get("id")

    a = SmClient(raw())
    _authenticate(a.raw, alice.username, alice.password)
    for previd in ("nonsense", f"x:{alice.jid}/gone", bob_previd):
        a.raw.send(f"<resume xmlns='{NS_SM}' previd='{previd}' h='0'/>")
        failed = a.read_until(lambda el: el.tag in (q(NS_SM, "failed"), q(NS_SM, "resumed")),
                              "<failed/>")
        assert failed.tag == q(NS_SM, "failed"), ET.tostring(failed)
        assert failed.find(q(NS_STANZAS_ERR, "item-not-found")) is not None, ET.tostring(failed)
    assert a.raw.bind("after-failed").startswith(alice.jid + "/")
    # bob's session is untouched.
    b.raw.send(f"<r xmlns='{NS_SM}'/>")
    b.read_until(_is(NS_SM, "a"), "bob's session still answers")


async def test_unacked_messages_go_offline_when_the_session_times_out(make_user, raw, xmpp):
    alice, bob = make_user("alice"), make_user("bob")
    a1 = SmClient(raw())
    full = a1.raw.login(alice.username, alice.password, "phone")
    enabled = _enable(a1, max_secs=1)
    assert enabled.get("max") == "1", ET.tostring(enabled)
    a1.raw.send("<presence/>")
    a1.read_until(lambda el: el.tag == q(NS_CLIENT, "presence") and el.get("from") == full,
                  "own presence")
    b = raw()
    b.login(bob.username, bob.password, "pc")
    tag = unique("lost-")
    _send_chat(b, full, f"{tag}1")
    a1.read_until(_is_message(f"{tag}1"), "m1 (never acknowledged)")
    a1.raw.close()
    _send_chat(b, full, f"{tag}2")
    # Past the one-second resumption window the session ends and its unacknowledged
    # messages go where undelivered messages go: offline storage.
    await asyncio.sleep(3.0)

    c = await xmpp(alice.username, alice.password, "laptop")
    mark = c.mark()
    c.send_presence()
    for i in (1, 2):
        got = await c.wait_for(is_message_with_body(f"{tag}{i}", "chat"), f"m{i} from offline",
                               since=mark)
        assert got.xml.find(q(NS_DELAY, "delay")) is not None, got
    await asyncio.sleep(1.0)
    bodies = [st["body"] for st in c.received[mark:]
              if st.xml.tag == q(NS_CLIENT, "message") and (st["body"] or "").startswith(tag)]
    assert sorted(bodies) == [f"{tag}1", f"{tag}2"], bodies


async def test_slixmpp_resumes_and_loses_nothing(make_user, xmpp, server):
    alice, bob = make_user("alice"), make_user("bob")
    a = await xmpp(alice.username, alice.password, "phone", plugins=("xep_0198",))
    sm = a.plugin["xep_0198"]
    deadline = time.monotonic() + 10
    while not sm.sm_id and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sm.sm_id, "slixmpp did not get a resumption id"
    b = await xmpp(bob.username, bob.password, "pc")
    a.send_presence()
    await a.sync()

    # Acknowledgement counts agree: slixmpp asks every 5 stanzas, the server answers
    # with exactly what it handled.
    for i in range(10):
        a.send_message(mto=bob.jid, mbody=f"count{i}", mtype="chat")
    await a.sync()
    a.plugin["xep_0198"].request_ack()
    deadline = time.monotonic() + 10
    while sm.last_ack != sm.seq and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert sm.last_ack == sm.seq, f"server acknowledged {sm.last_ack} of {sm.seq}"

    # Drop the socket under slixmpp's feet, send while it is away, reconnect: it
    # resumes and everything arrives once.
    resumed = asyncio.Event()
    a.add_event_handler("session_resumed", lambda _: resumed.set())
    a.transport.abort()
    await a.wait_disconnected()
    tag = unique("away-")
    for i in range(3):
        b.send_message(mto=a.boundjid.full, mbody=f"{tag}{i}", mtype="chat")
    await b.sync()
    mark = a.mark()
    a.connect(host=server.host, port=server.starttls_port)
    await asyncio.wait_for(resumed.wait(), 10)
    for i in range(3):
        await a.wait_for(is_message_with_body(f"{tag}{i}", "chat"), f"message {i}", since=mark)
    await asyncio.sleep(1.0)
    bodies = [st["body"] for st in a.received[mark:]
              if st.xml.tag == q(NS_CLIENT, "message") and (st["body"] or "").startswith(tag)]
    assert bodies == [f"{tag}{i}" for i in range(3)], bodies
    # The resumed stream is the same session: the server still counts our stanzas.
    a.send_message(mto=b.boundjid.full, mbody=f"{tag}after", mtype="chat")
    await b.wait_for(is_message_with_body(f"{tag}after", "chat"), "a message after resumption")
    assert DOMAIN in a.boundjid.full


async def test_misuse_gets_failed_or_a_stream_error(make_user, raw):
    alice = make_user("alice")
    a = SmClient(raw())
    a.raw.login(alice.username, alice.password, "sm")
    # <r/> or <a/> before enabling is refused with <failed/>; the stream goes on.
    b = SmClient(raw())
    b.raw.login(alice.username, alice.password, "other")
    for nonza in (f"<r xmlns='{NS_SM}'/>", f"<a xmlns='{NS_SM}' h='0'/>"):
        b.raw.send(nonza)
        failed = b.read_until(_is(NS_SM, "failed"), "<failed/>")
        assert failed.find(q(NS_STANZAS_ERR, "unexpected-request")) is not None, ET.tostring(failed)
    assert b.raw.iq("get", "<ping xmlns='urn:xmpp:ping'/>").get("type") == "result"

    _enable(a, resume=False)
    # Enabling twice, or resuming inside a bound stream, is refused; the stream goes on.
    for nonza in (f"<enable xmlns='{NS_SM}'/>", f"<resume xmlns='{NS_SM}' previd='x' h='0'/>"):
        a.raw.send(nonza)
        failed = a.read_until(_is(NS_SM, "failed"), "<failed/>")
        assert failed.find(q(NS_STANZAS_ERR, "unexpected-request")) is not None, ET.tostring(failed)
    a.raw.send(f"<r xmlns='{NS_SM}'/>")
    assert a.read_until(_is(NS_SM, "a"), "<a/>").get("h") == "0"
    # An unparsable count ends the stream.
    a.raw.send(f"<a xmlns='{NS_SM}' h='many'/>")
    err = a.read_until(_is(NS_STREAM, "error"), "stream error")
    assert err.find(q(NS_STREAMS_ERR, "bad-format")) is not None, ET.tostring(err)
