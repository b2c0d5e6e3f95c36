"""Specification of the responder under handshake load (PROTOCOL.md 3.10, 4.5-4.7):
the global handshake budget, cookie replies and message 1s that return a cookie;
and of the client that restarts a session whose hello goes unacknowledged.

Everything runs on the fake clock of tests/sim.py; no sockets.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from client_net import Net
from cryptography.fernet import Fernet
from handshake_flood import build_message_1s
from sim import START, LossyNetwork, Pair

from udpchat.core import events, wire
from udpchat.core.endpoint import INIT_BYTES, ClientEndpoint, ServerEndpoint
from udpchat.core.limits import ProtocolConfig

#: A budget of 2 message 1s (and 2 a second): the third one finds the server under load.
SMALL = ProtocolConfig(handshake_budget_per_s=2.0, handshake_budget_burst=2)
CLIENT = ("198.51.100.7", 40000)


#: Authentic message 1s of `count` new sessions, as a key holder builds them.
message_1s = build_message_1s


def cookie_mac(psk: bytes) -> wire.HmacSha256:
    """The MAC of cookie replies under `psk` (K_cookie, PROTOCOL.md 2.8)."""
    return wire.HmacSha256(wire.cookie_reply_key(wire.psk_raw(psk)))


def forged(n: int) -> tuple[str, int]:
    return (f"203.0.113.{n % 250 + 1}", 1000 + n)


def flood(server: ServerEndpoint, psk: bytes, count: int, now: float) -> list[tuple[bytes, object]]:
    """`count` authentic message 1s from forged sources; what the server sent back."""
    for n, data in enumerate(message_1s(psk, count, now)):
        server.receive_datagram(data, forged(n), now)
    return server.datagrams_to_send(now)


def cookie_of(server: ServerEndpoint, psk: bytes, addr: object, now: float) -> bytes:
    """A cookie reply the server sends `addr` (it must be under load), and its cookie."""
    data = message_1s(psk, 1, now)[0]
    server.receive_datagram(data, addr, now)
    (reply, to), *_ = server.datagrams_to_send(now)
    assert to == addr and reply[0] == wire.COOKIE_REPLY
    return reply[1 : 1 + wire.COOKIE_BYTES]


def test_within_the_budget_nothing_changes_and_no_cookie_is_asked() -> None:
    """Below the budget every authentic message 1 is answered with message 2 at once,
    as in version 1: no cookie reply, nothing to count."""
    psk = Fernet.generate_key()
    server = ServerEndpoint(psk, SMALL)
    out = flood(server, psk, 2, START)
    assert [data[0] for data, _ in out] == [wire.HANDSHAKE_RESPONSE] * 2
    assert server.stats["cookie-required"] == 0 and not server.under_load(START)


def test_over_the_budget_a_forged_source_gets_only_a_small_cookie_reply_and_no_state() -> None:
    """Over the budget, an authentic message 1 without a cookie gets a COOKIE_REPLY of
    33 bytes (a fifth of its 170), creates no session, spends no rate-limit token and
    is not remembered by the replay cache: the server keeps nothing for it."""
    psk = Fernet.generate_key()
    server = ServerEndpoint(psk, SMALL)
    flood(server, psk, 2, START)
    sessions = len(server._sessions)  # noqa: SLF001 - the state under test
    out = flood(server, psk, 200, START)
    assert len(out) == 200
    assert all(data[0] == wire.COOKIE_REPLY for data, _ in out)
    assert all(len(data) == wire.COOKIE_REPLY_BYTES == 33 < INIT_BYTES for data, _ in out)
    assert [addr for _, addr in out] == [forged(n) for n in range(200)]
    assert server.stats["cookie-required"] == 200 and server.under_load(START)
    assert len(server._sessions) == sessions  # noqa: SLF001
    assert len(server._seen_ephemerals) == sessions  # noqa: SLF001
    assert len(server._handshake_limiter) == 2  # noqa: SLF001 - the first two only


def test_under_load_a_real_client_returns_the_cookie_and_completes() -> None:
    """A client meeting a server under load gets a cookie reply, sends a new message 1
    with the cookie at once (186 bytes: the 170 of version 1 and the cookie), and
    completes its handshake in one extra round trip."""
    psk = Fernet.generate_key()
    pair = Pair(ServerEndpoint(psk, SMALL), ClientEndpoint(psk, SMALL), LossyNetwork())
    flood(pair.server, psk, 10, pair.now)
    session_id = pair.connect()
    sizes = [len(data) for data, src, _ in pair.network.sent if src == pair.client_addr]
    assert sizes[:3] == [INIT_BYTES, wire.INIT_WITH_COOKIE_BYTES, 99]  # 99: the PING
    assert pair.now - START < 0.05  # two round trips of 20 ms, no retry timer
    assert pair.server.under_load(pair.now)
    assert any(isinstance(e, events.SessionStarted) for e in pair.server_events)
    assert pair.client.session_id == session_id


def test_a_cookie_for_another_address_or_an_expired_one_is_refused() -> None:
    """Under load a cookie counts only for the address it was made for (host and
    port), and only under the current or previous secret: after two rotations
    (cookie_secret_s = 60 s each) it earns a new cookie reply, not a handshake."""
    psk = Fernet.generate_key()
    config = replace(SMALL, handshake_budget_per_s=1e-6)  # stays under load
    server = ServerEndpoint(psk, config)
    flood(server, psk, 3, START)
    cookie = cookie_of(server, psk, CLIENT, START)

    def returned(addr: object, now: float) -> int:
        """The type of the server's answer to a message 1 returning `cookie`."""
        data = message_1s(psk, 1, now)[0] + cookie
        server.receive_datagram(data, addr, now)
        (answer, _), *_ = server.datagrams_to_send(now)
        return answer[0]

    assert returned(CLIENT, START) == wire.HANDSHAKE_RESPONSE
    assert returned(("198.51.100.8", 40000), START) == wire.COOKIE_REPLY
    assert returned((CLIENT[0], CLIENT[1] + 1), START) == wire.COOKIE_REPLY
    assert returned(CLIENT, START + 61) == wire.HANDSHAKE_RESPONSE  # previous secret
    assert returned(CLIENT, START + 121) == wire.COOKIE_REPLY  # two rotations later


def test_a_cookie_reply_not_bound_to_the_clients_message_1_is_dropped() -> None:
    """A cookie reply is taken only if its tag binds it to one of the client's recent
    message 1s under K_cookie: one made for another message 1, or by someone without
    the key, or with one bit flipped, is dropped and changes nothing."""
    psk = Fernet.generate_key()
    client = ClientEndpoint(psk)
    client.connect(START)
    sent = client.datagrams_to_send(START)[0]
    other = message_1s(psk, 1, START)[0]
    cookie = bytes(range(16))
    good = wire.build_cookie_reply(cookie_mac(psk), cookie, sent)
    bad = [
        wire.build_cookie_reply(cookie_mac(Fernet.generate_key()), cookie, sent),
        wire.build_cookie_reply(cookie_mac(psk), cookie, other),
    ]
    bad += [good[:i] + bytes([good[i] ^ 1]) + good[i + 1 :] for i in range(1, len(good))]
    for data in bad:
        client.receive_datagram(data, START)
        assert client.datagrams_to_send(START) == []
    assert client.stats["unbound-response"] == len(bad)
    client.receive_datagram(good, START)
    (again,) = client.datagrams_to_send(START)
    assert len(again) == wire.INIT_WITH_COOKIE_BYTES and again.endswith(cookie)
    assert hashlib.sha256(again).digest() != hashlib.sha256(sent).digest()


def test_a_cookie_reply_makes_one_new_attempt_and_leaves_the_retry_timer_alone() -> None:
    """The client returns a cookie at once, once: a second cookie reply with the same
    cookie (a late answer to an earlier attempt) sends nothing; the retry timer keeps
    its schedule (1 s after the first attempt)."""
    psk = Fernet.generate_key()
    mac = cookie_mac(psk)
    client = ClientEndpoint(psk)
    client.connect(START)
    first = client.datagrams_to_send(START)[0]
    timer = client.get_timer()
    cookie = bytes(16)
    client.receive_datagram(wire.build_cookie_reply(mac, cookie, first), START + 0.1)
    assert len(client.datagrams_to_send(START + 0.1)) == 1
    assert client.get_timer() == timer
    client.receive_datagram(wire.build_cookie_reply(mac, cookie, first), START + 0.2)
    assert client.datagrams_to_send(START + 0.2) == []
    client.handle_timer(START + 1.0)  # the scheduled retry carries the cookie too
    (retry,) = client.datagrams_to_send(START + 1.0)
    assert retry.endswith(cookie) and len(retry) == wire.INIT_WITH_COOKIE_BYTES


def test_a_version_1_initiator_under_load_gets_no_session_until_the_load_passes() -> None:
    """A client that does not know cookies (it drops cookie replies, type 0x05) gets
    no session while the server is under load, and its retries succeed once the flood
    has stopped for under_load_hold_s."""
    psk = Fernet.generate_key()
    server = ServerEndpoint(psk, SMALL)
    flood(server, psk, 10, START)
    # What a version-1 client sees: only cookie replies, which it ignores.
    for now in (START + 0.5, START + 0.9):
        data = message_1s(psk, 1, now)[0]
        server.receive_datagram(data, CLIENT, now)
        assert [d[0] for d, _ in server.datagrams_to_send(now)] == [wire.COOKIE_REPLY]
    later = START + SMALL.under_load_hold_s + 1.5  # the budget refilled meanwhile
    server.receive_datagram(message_1s(psk, 1, later)[0], CLIENT, later)
    assert [d[0] for d, _ in server.datagrams_to_send(later)] == [wire.HANDSHAKE_RESPONSE]


def test_a_client_whose_hello_is_never_acknowledged_starts_a_new_session() -> None:
    """When the hello (the first datagram under the new keys) is lost every time, or
    the server forgot the half-open session, the client starts a new session
    HELLO_ACK_TIMEOUT_S (3 s) after the handshake instead of waiting for expiry (30 s),
    and is welcomed on it."""
    net = Net(config=ProtocolConfig())  # the real timers: expiry after 30 s
    alice = net.client("alice")
    net.run_until(lambda: alice.chat.endpoint.connected, timeout=5)
    first = alice.chat.endpoint.session_id
    started = net.now
    net.chat_server.endpoint._sessions.clear()  # noqa: SLF001 - the server forgot it
    net.chat_server.endpoint._pending.clear()  # noqa: SLF001
    net.run_until(lambda: alice.chat.connected, timeout=10)
    assert alice.chat.endpoint.session_id != first
    assert net.now - started < 3.5
    assert "-!- you are alice in lobby" in alice.lines


def test_replays_of_a_captured_message_1_never_put_the_server_under_load() -> None:
    """An outsider replaying a captured message 1 from spoofed sources (all it can do
    without the key) is refused as a replay before the global budget is touched: the
    server does not go under load, sends nothing back, and a version-1 client still
    gets a handshake."""
    psk = Fernet.generate_key()
    server = ServerEndpoint(psk, SMALL)
    (captured,) = message_1s(psk, 1, START)
    server.receive_datagram(captured, CLIENT, START)
    assert [d[0] for d, _ in server.datagrams_to_send(START)] == [wire.HANDSHAKE_RESPONSE]
    server.stats.take()
    for n in range(150):
        server.receive_datagram(captured, forged(n), START + 0.001 * n)
    assert server.datagrams_to_send(START + 0.2) == []
    assert server.stats.take() == {"replayed-handshake": 150}
    (fresh,) = message_1s(psk, 1, START + 0.2)
    server.receive_datagram(fresh, ("198.51.100.8", 40000), START + 0.2)
    assert [d[0] for d, _ in server.datagrams_to_send(START + 0.2)] == [wire.HANDSHAKE_RESPONSE]
