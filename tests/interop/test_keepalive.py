"""Dead-connection detection with XEP-0199 server-to-client pings, against
the module's ``ping_server``: it pings a client after PING_INTERVAL_SECS
(1 s) of silence and gives up PING_TIMEOUT_SECS (2 s) after an unanswered
ping with a ``<connection-timeout/>`` stream error.

The server checks its sessions on a timer whose period is the ping timeout,
so a ping is sent at most interval + timeout after the client fell silent,
and an unanswered one is acted upon at most two periods after it was sent;
the deadlines below are those bounds plus a little slack.

Raw clients block the thread while they read. In the async test, raw calls
run in a worker thread so that the slixmpp clients keep answering the
server's pings meanwhile.
"""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET

from xmpp_helpers import (
    DOMAIN,
    NS_CLIENT,
    NS_STREAMS_ERR,
    PING_INTERVAL_SECS,
    PING_TIMEOUT_SECS,
    RawStream,
    StreamClosed,
    is_presence,
    is_server_ping,
    q,
    stream_error_condition,
    subscribe_and_approve,
)

SLACK = 0.5
# From the client's last bytes to the server's ping.
PING_DEADLINE = PING_INTERVAL_SECS + PING_TIMEOUT_SECS + SLACK  # 3.5 s
# From the client's last bytes to the connection-timeout stream error.
CLOSE_DEADLINE = PING_INTERVAL_SECS + 3 * PING_TIMEOUT_SECS  # 7 s
# How long a client that answers must stay connected.
KEEP_ALIVE_FOR = 6.5


def answer_ping(rs: RawStream, ping: ET.Element) -> None:
    rs.send(f"<iq type='result' id='{ping.get('id')}' to='{DOMAIN}'/>")


def assert_ping_request(ping: ET.Element, jid: str) -> None:
    assert ping.get("id"), f"server ping without id: {ET.tostring(ping)!r}"
    assert ping.get("from") in (DOMAIN, None), ET.tostring(ping)
    assert ping.get("to") in (jid, None), ET.tostring(ping)
    assert len(list(ping)) == 1, f"ping iq must carry exactly <ping/>: {ET.tostring(ping)!r}"


def login_with_presence(rs: RawStream, user: str, pw: str, resource: str) -> tuple[str, float]:
    """Log in, send initial presence; return (full JID, time of last send)."""
    jid = rs.login(user, pw, resource)
    rs.send("<presence/>")
    return jid, time.monotonic()


def test_unanswered_ping_closes_with_connection_timeout(ping_raw, ping_make_account):
    user, pw = ping_make_account("silent")
    rs = ping_raw()
    jid, t_silent = login_with_presence(rs, user, pw, "silent")

    # From now on the client sends nothing at all.
    try:
        ping = rs.read_until(is_server_ping,
                             timeout=t_silent + PING_DEADLINE - time.monotonic())
    except StreamClosed:
        raise AssertionError(f"stream closed before any ping was sent; {rs.describe()}") from None
    t_ping = time.monotonic()
    assert_ping_request(ping, jid)

    rs.read_until_eof(timeout=t_silent + CLOSE_DEADLINE - time.monotonic(), send_close=False)
    t_closed = time.monotonic()
    err = rs.stream_error()
    assert err is not None, f"closed without a stream error; {rs.describe()}"
    assert stream_error_condition(err) == "connection-timeout", ET.tostring(err)
    assert err.find(q(NS_STREAMS_ERR, "connection-timeout")) is not None
    assert rs.stream_ended, f"no </stream:stream> after the stream error; {rs.describe()}"
    assert rs.eof, "TCP connection still open"
    # The client was given the configured time to answer.
    assert t_closed - t_ping >= PING_TIMEOUT_SECS - 0.3, \
        f"closed {t_closed - t_ping:.2f}s after the ping (timeout is {PING_TIMEOUT_SECS}s)"


def test_answered_pings_keep_the_session(ping_raw, ping_make_account):
    user, pw = ping_make_account("alive")
    rs = ping_raw()
    jid, t0 = login_with_presence(rs, user, pw, "alive")

    answered: list[str] = []
    end = t0 + KEEP_ALIVE_FOR
    while (remaining := end - time.monotonic()) > 0:
        try:
            elem = rs.next_element(remaining)
        except StreamClosed:
            raise AssertionError(f"session closed after {time.monotonic() - t0:.1f}s although "
                                 f"every ping was answered ({answered}); {rs.describe()}") from None
        if elem is None:
            break
        assert elem.tag != q("http://etherx.jabber.org/streams", "error"), ET.tostring(elem)
        if is_server_ping(elem):
            assert_ping_request(elem, jid)
            answer_ping(rs, elem)
            answered.append(elem.get("id"))
    assert len(answered) >= 2, \
        f"expected a ping about every {PING_TIMEOUT_SECS}s of silence, got {answered}"
    assert len(set(answered)) == len(answered), f"ping ids reused: {answered}"
    assert rs.stream_error() is None and not rs.stream_ended and not rs.eof, rs.describe()

    # The session still works: a ping of ours is answered (server pings
    # arriving meanwhile are answered too).
    iq_id = rs.next_id()
    rs.send(f"<iq type='get' id='{iq_id}' to='{DOMAIN}'><ping xmlns='urn:xmpp:ping'/></iq>")

    def ours(elem: ET.Element) -> bool:
        if is_server_ping(elem):
            answer_ping(rs, elem)
            return False
        return elem.tag == q(NS_CLIENT, "iq") and elem.get("id") == iq_id

    res = rs.read_until(ours)
    assert res.get("type") == "result", ET.tostring(res)
    assert res.get("from") in (DOMAIN, None), ET.tostring(res)


async def test_vanished_client_goes_unavailable_for_subscribers(ping_xmpp, ping_raw,
                                                               ping_make_account):
    (x, px), (w, pw) = ping_make_account("vanish"), ping_make_account("watch")
    watcher = await ping_xmpp(w, pw, "watch")
    setup = await ping_xmpp(x, px, "setup")
    watcher.send_presence()
    setup.send_presence()
    await watcher.sync()
    await setup.sync()
    await subscribe_and_approve(watcher, setup)  # watcher is subscribed to x
    await setup.close()

    mark = watcher.mark()
    rs = ping_raw()
    jid, t_silent = await asyncio.to_thread(login_with_presence, rs, x, px, "ghost")
    await watcher.wait_for(is_presence(jid, None), "the ghost's available presence", since=mark)

    # The ghost neither reads nor writes any more (a dead network path).
    unavailable = await watcher.wait_for(is_presence(jid, "unavailable"),
                                         "the ghost's unavailable presence after the ping timeout",
                                         timeout=CLOSE_DEADLINE + 3, since=mark)
    waited = time.monotonic() - t_silent
    assert unavailable.xml.get("to") in (watcher.boundjid.full, watcher.boundjid.bare, None)
    assert waited >= PING_INTERVAL_SECS + PING_TIMEOUT_SECS - 0.3, \
        f"ghost reported unavailable only {waited:.2f}s after it fell silent"

    # What the ghost would have seen: the ping, then the timeout.
    await asyncio.to_thread(rs.read_until_eof, 3.0, False)
    assert any(is_server_ping(e) for e in rs.elements), f"no ping was sent; {rs.describe()}"
    err = rs.stream_error()
    assert err is not None and stream_error_condition(err) == "connection-timeout", rs.describe()

    # The watcher answered its own pings all along and is still connected.
    assert not watcher.stream_errors, watcher.stream_errors
    assert not watcher.disconnected_flag.is_set(), "watcher was disconnected"
    await watcher.sync()
