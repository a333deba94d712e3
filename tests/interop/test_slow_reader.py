"""A client that never reads: the server bounds what it keeps for it and lets go of it.

A raw TLS client logs in, shrinks its receive buffer and never reads again; another
session sends it large stanzas. The server must keep at most ``c2s.max_outbound_bytes``
of them (plus one stanza) per session, end the session when that is exceeded or when a
write takes longer than ``c2s.write_timeout_secs``, and release the socket at once: its
side of the TCP connection is gone from the kernel's table (reset, so the kernel does not
keep the unsent bytes either), not left ESTABLISHED behind a blocked write. The server's
resident memory (VmRSS from ``/proc``) is sampled throughout, and other sessions keep
working.

The server of this module has rate limits off (one sender may send many stanzas to one
destination) and small bounds, so that the limits are reached in seconds.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Iterator, Optional

import pytest

from conftest import _account_maker, _http_caller, _waddle_server
from xmpp_helpers import NS_CLIENT, RawStream, ServerInfo, q

MAX_OUTBOUND_BYTES = 256 * 1024
WRITE_TIMEOUT_SECS = 3
STANZA_BODY = 48 * 1024  # under the suite's 64 KiB stanza limit, with room for the envelope

# What the server may take on beyond its size before the test (the outbox of one
# session, the kernel's buffers are not in VmRSS, allocator slack of a debug build). A
# server bounded in stanzas only (4,096) would keep every one of the 37.5 MiB sent here.
RSS_GROWTH_BOUND = 32 * 1024 * 1024

SLOW_ENV = {
    "WADDLE_RATE_LIMITS_ENABLED": "false",
    "WADDLE_ARCHIVE_ENABLED": "false",
    "WADDLE_C2S_MAX_OUTBOUND_BYTES": str(MAX_OUTBOUND_BYTES),
    "WADDLE_C2S_WRITE_TIMEOUT_SECS": str(WRITE_TIMEOUT_SECS),
}


@pytest.fixture(scope="module")
def slow_server() -> Iterator[ServerInfo]:
    yield from _waddle_server("slow_server", SLOW_ENV)


@pytest.fixture
def slow_raw(slow_server):
    opened: list[RawStream] = []

    def open_raw() -> RawStream:
        rs = RawStream(slow_server.host, slow_server.starttls_port)
        opened.append(rs)
        return rs

    yield open_raw
    for rs in opened:
        rs.close()


def vm_rss(info: ServerInfo) -> int:
    """The server process's resident memory in bytes (``/proc/<pid>/status``)."""
    with open(f"/proc/{info.proc.pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


class RssSampler:
    """Samples the server's VmRSS every 50 ms in a thread; ``peak`` is the largest."""

    def __init__(self, info: ServerInfo):
        self.info = info
        self.peak = vm_rss(info)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, vm_rss(self.info))
            except OSError:
                return

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def tcp_entry(server_port: int, client_port: int) -> Optional[tuple[int, int]]:
    """The server side of a loopback connection in ``/proc/net/tcp``: (state, bytes in
    its send queue), or None once the kernel no longer has it."""
    local = f"0100007F:{server_port:04X}"
    remote = f"0100007F:{client_port:04X}"
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            if fields[1] == local and fields[2] == remote:
                tx_queue = int(fields[4].split(":")[0], 16)
                return int(fields[3], 16), tx_queue
    return None


def login_silent_client(open_raw, account: tuple[str, str]) -> tuple[RawStream, str, int]:
    """Logs a raw client in, then makes it a reader that never reads: the smallest
    receive buffer, so the server's writes stop within a few hundred KiB."""
    rs = open_raw()
    jid = rs.login(*account, "slow")
    rs.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return rs, jid, rs.sock.getsockname()[1]


@pytest.fixture
def slow_account(slow_server):
    """``slow_account(prefix) -> (username, password)`` on the module's server."""
    return _account_maker(_http_caller(slow_server))


def send_and_drain(sender: RawStream, stanza: str) -> None:
    """Sends with the stream's full timeout (a read leaves the socket's timeout at what
    remained of it), then reads whatever came for the sender."""
    sender.sock.settimeout(sender.timeout)
    sender.send(stanza)
    sender.poll(0)


def headline(to: str, n: int) -> str:
    # A headline: never stored offline nor archived, so the stanzas that find the
    # client gone cost nothing but their routing.
    return (f"<message type='headline' to='{to}' id='h{n}'><body>"
            + "x" * STANZA_BODY + "</body></message>")


def released_within(server_port: int, client_port: int, seconds: float) -> Optional[float]:
    """Seconds until the server side of the connection is gone (None: still there)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if tcp_entry(server_port, client_port) is None:
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def log_text(info: ServerInfo) -> str:
    with open(info.log_path, "rb") as fh:
        return fh.read().decode("utf-8", "replace")


def assert_still_serving(open_raw, make_account) -> None:
    """Two fresh sessions exchange a message."""
    a, b = open_raw(), open_raw()
    a.login(*make_account("alive"), "r")
    b_jid = b.login(*make_account("alive"), "r")
    # A round trip through b's session: the bind result leaves before the session is in
    # the registry, and a message racing it would go to offline storage.
    assert b.iq("get", "<ping xmlns='urn:xmpp:ping'/>").get("type") == "result"
    a.sock.settimeout(a.timeout)
    a.send(f"<message type='chat' to='{b_jid}' id='hello'><body>still here</body></message>")
    got = b.read_until(lambda e: e.tag == q(NS_CLIENT, "message") and e.get("id") == "hello")
    assert got.findtext(q(NS_CLIENT, "body")) == "still here"


def test_a_client_over_its_byte_bound_is_cut_off_at_once(slow_server, slow_raw, slow_account):
    """Up to 800 stanzas of 48 KiB (37.5 MiB) go to a client that never reads, until its
    connection is gone: the server disconnects it once more than the byte bound waits,
    resets its socket at once, and its memory stays within RSS_GROWTH_BOUND."""
    slow, slow_jid, client_port = login_silent_client(slow_raw, slow_account("slow"))
    sender = slow_raw()
    sender.login(*slow_account("blaster"), "s")
    server_port = slow_server.starttls_port
    assert tcp_entry(server_port, client_port) is not None

    baseline = vm_rss(slow_server)
    deadline = time.monotonic() + 60
    sent = 0
    released_after = None
    with RssSampler(slow_server) as rss:
        while sent < 800 and time.monotonic() < deadline:
            send_and_drain(sender, headline(slow_jid, sent))
            sent += 1
            if sent % 10 == 0 and tcp_entry(server_port, client_port) is None:
                released_after = sent
                break
        # The connection is reset as soon as the bound is exceeded: within a moment of
        # the last stanza, not after a timeout.
        if released_after is None:
            gone = released_within(server_port, client_port, 2.0)
            assert gone is not None, \
                f"the server still holds the connection after {sent} stanzas: {tcp_entry(server_port, client_port)}"
        time.sleep(0.5)
        peak = rss.peak
    growth = peak - baseline
    print(f"\n[slow reader] {sent} stanzas sent ({sent * STANZA_BODY / 2**20:.1f} MiB); "
          f"VmRSS baseline {baseline / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB "
          f"(+{growth / 2**20:.1f} MiB)")
    assert sent < 800, "the client was never disconnected"
    assert growth < RSS_GROWTH_BOUND, f"VmRSS grew by {growth / 2**20:.1f} MiB"
    assert "client does not read fast enough; disconnecting" in log_text(slow_server)

    # Reset, not closed politely: the client's side sees the connection gone too.
    client_side = tcp_entry(client_port, server_port)
    assert client_side is None or client_side[0] == 7, client_side  # TCP_CLOSE
    assert_still_serving(slow_raw, slow_account)


def test_a_write_that_takes_too_long_ends_the_session(slow_server, slow_raw, slow_account):
    """Stanzas stop while less than the byte bound waits, but the client still reads
    nothing: the blocked write times out after c2s.write_timeout_secs and the socket is
    released then."""
    slow, slow_jid, client_port = login_silent_client(slow_raw, slow_account("stuck"))
    sender = slow_raw()
    sender.login(*slow_account("trickle"), "s")
    server_port = slow_server.starttls_port

    # Send until the kernel takes no more (the server's send queue stops growing), then
    # a few more, well under the byte bound: the writer is blocked with bytes pending.
    last_queue, flat, sent = -1, 0, 0
    while sent < 400 and flat < 3:
        send_and_drain(sender, headline(slow_jid, sent))
        sent += 1
        time.sleep(0.05)
        entry = tcp_entry(server_port, client_port)
        assert entry is not None, f"disconnected after {sent} stanzas, before any timeout"
        flat = flat + 1 if entry[1] <= last_queue else 0
        last_queue = max(last_queue, entry[1])
    assert flat == 3, f"the send queue kept growing for {sent} stanzas"
    stalled_at = time.monotonic()
    assert "a write to the client timed out" not in log_text(slow_server)

    gone = released_within(server_port, client_port, WRITE_TIMEOUT_SECS + 5)
    assert gone is not None, \
        f"connection still there {WRITE_TIMEOUT_SECS + 5}s after the writes stopped: {tcp_entry(server_port, client_port)}"
    waited = time.monotonic() - stalled_at
    print(f"\n[slow reader] {sent} stanzas sent; released {waited:.1f}s after the last")
    assert waited >= WRITE_TIMEOUT_SECS - 1, f"released after {waited:.1f}s, before the write timeout"
    log = log_text(slow_server)
    assert "a write to the client timed out" in log
    assert_still_serving(slow_raw, slow_account)



NS_SM = "urn:xmpp:sm:3"
NS_DELAY = "urn:xmpp:delay"


def test_a_resumable_session_that_overflows_ends_and_its_unacked_go_offline(
        slow_server, slow_raw, slow_account):
    """Stream management does not keep a client that does not read: overflowing the byte
    bound ends even a resumable session (its socket reset at once, its resumption id
    refused), and the messages it never acknowledged go to offline storage."""
    account = slow_account("smslow")
    slow = slow_raw()
    full = slow.login(*account, "phone")
    slow.send(f"<enable xmlns='{NS_SM}' resume='true'/>")
    previd = slow.read_until(lambda e: e.tag == q(NS_SM, "enabled")).get("id")
    assert previd, slow.describe()
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client_port = slow.sock.getsockname()[1]
    server_port = slow_server.starttls_port
    sender = slow_raw()
    sender.login(*slow_account("smblaster"), "s")

    # Three small chat messages the client never acknowledges, then headlines (which are
    # not stored offline) until the server lets go of it.
    tag = f"sm{client_port}-"
    for i in range(3):
        send_and_drain(sender, f"<message type='chat' to='{full}' id='{tag}{i}'><body>{tag}{i}</body></message>")
    deadline = time.monotonic() + 60
    sent = 0
    while sent < 800 and time.monotonic() < deadline and tcp_entry(server_port, client_port):
        send_and_drain(sender, headline(full, sent))
        sent += 1
    assert released_within(server_port, client_port, 2.0) is not None, \
        f"the server still holds the connection after {sent} stanzas"
    print(f"\n[slow reader] SM: released after {sent} stanzas")

    # Not waiting for a resumption: the id is unknown now.
    again = slow_raw()
    again.open_stream()
    again.starttls()
    assert again.auth_plain(*account).tag == q("urn:ietf:params:xml:ns:xmpp-sasl", "success")
    again.open_stream()
    again.send(f"<resume xmlns='{NS_SM}' previd='{previd}' h='0'/>")
    answer = again.read_until(lambda e: e.tag in (q(NS_SM, "failed"), q(NS_SM, "resumed")))
    assert answer.tag == q(NS_SM, "failed"), again.describe()

    # The chat messages were never acknowledged: they wait in offline storage.
    back = slow_raw()
    back.login(*account, "laptop")
    back.sock.settimeout(back.timeout)
    back.send("<presence/>")
    for i in range(3):
        got = back.read_until(lambda e: e.tag == q(NS_CLIENT, "message") and e.get("id") == f"{tag}{i}")
        assert got.find(q(NS_DELAY, "delay")) is not None, "not from offline storage"


def test_a_reading_client_gets_a_burst_larger_than_its_byte_bound(slow_server, slow_raw,
                                                                   slow_account):
    """The byte bound is for clients that do not read: one that reads gets a burst of
    any size, paced by how fast it reads (here its offline queue, eight times the bound,
    delivered at its first presence: nothing lost, nothing twice)."""
    sender_user, receiver_user = slow_account(), slow_account()
    sender = slow_raw()
    sender.login(*sender_user, "s")
    receiver_jid = f"{receiver_user[0]}@localhost"
    count = 8 * MAX_OUTBOUND_BYTES // STANZA_BODY
    body = "y" * STANZA_BODY
    for n in range(count):
        send_and_drain(sender, f"<message to='{receiver_jid}' type='chat' id='b{n}'>"
                               f"<body>{n} {body}</body></message>")
    sender.iq("get", "<ping xmlns='urn:xmpp:ping'/>")  # everything before it is stored

    receiver = slow_raw()
    receiver.login(*receiver_user, "r")
    receiver.send("<presence/>")
    got: list[int] = []
    deadline = time.monotonic() + 30
    while len(got) < count and time.monotonic() < deadline:
        el = receiver.next_element(max(0.0, deadline - time.monotonic()))
        if el is not None and el.tag == q(NS_CLIENT, "message"):
            b = el.find(q(NS_CLIENT, "body"))
            got.append(int(b.text.split(" ", 1)[0]))
    assert sorted(got) == list(range(count)), f"{len(got)} of {count}: {got[:5]}..."
    assert receiver.stream_error() is None, receiver.describe()
