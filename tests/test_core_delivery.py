"""Specification of delivery: exactly once, in order, over a network that misbehaves.

These tests run the real protocol core (ServerEndpoint + ClientEndpoint) on a fake
clock over the seeded in-memory LossyNetwork from tests/sim.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet
from sim import START, LossyNetwork, Pair, received

from udpchat.core import events, wire
from udpchat.core.endpoint import ClientEndpoint, MessageTooLarge, QueueFull, ServerEndpoint
from udpchat.core.limits import MAX_DATAGRAM_BYTES, MAX_PAYLOAD_BYTES, ProtocolConfig

BAD_NETWORK: dict[str, Any] = dict(loss=0.20, duplicate=0.05, delay_s=0.01, jitter_s=0.03)


def make_pair(config: ProtocolConfig = ProtocolConfig(), **network: Any) -> Pair:
    psk = Fernet.generate_key()
    net = LossyNetwork(seed=1234, **network)
    return Pair(ServerEndpoint(psk, config), ClientEndpoint(psk, config), net)


def pump_both_ways(pair: Pair, session_id: bytes, count: int, on_progress=None) -> None:
    """Send `count` numbered messages each way, feeding queues as they drain."""
    up = iter(range(count))
    down = iter(range(count))
    pending = {"up": next(up, None), "down": next(down, None)}

    def feed() -> None:
        while pending["up"] is not None:
            try:
                pair.client.send(b"c%d" % pending["up"], pair.now)
            except QueueFull:
                break
            pending["up"] = next(up, None)
        while pending["down"] is not None:
            try:
                pair.server.send(session_id, b"s%d" % pending["down"], pair.now)
            except QueueFull:
                break
            pending["down"] = next(down, None)
        if on_progress is not None:
            on_progress()

    # Counted as the events come, not by scanning them all after every step: that
    # scan made 10,000 messages O(n^2): three quarters of this file's CPU.
    arrived = {"server": [0, 0], "client": [0, 0]}  # events looked at, messages among them

    def received_so_far(side: str, side_events: list[events.Event]) -> int:
        looked_at, messages = arrived[side]
        messages += sum(1 for e in side_events[looked_at:] if isinstance(e, events.MessageReceived))
        arrived[side] = [len(side_events), messages]
        return messages

    def done() -> bool:
        return (
            received_so_far("server", pair.server_events) == count
            and received_so_far("client", pair.client_events) == count
            and pair.client.idle
        )

    pair.run(done, max_seconds=3600, before_step=feed)


def assert_exactly_once_in_order(pair: Pair, count: int) -> None:
    assert received(pair.server_events) == [b"c%d" % i for i in range(count)]
    assert received(pair.client_events) == [b"s%d" % i for i in range(count)]
    for side in (pair.server_events, pair.client_events):
        assert not [e for e in side if isinstance(e, events.MessageNotDelivered)]


def test_ten_thousand_messages_survive_loss_duplication_and_reordering() -> None:
    """10,000 messages each way at 20% loss, 5% duplication and reordering arrive
    exactly once and in order, and every one is acknowledged to its sender."""
    pair = make_pair(**BAD_NETWORK)
    session_id = pair.connect()
    pump_both_ways(pair, session_id, 10_000)
    assert_exactly_once_in_order(pair, 10_000)
    delivered = [e for e in pair.client_events if isinstance(e, events.MessageDelivered)]
    assert len(delivered) == 10_000
    assert pair.network.sent, "the network carried the traffic"
    assert all(len(d) <= MAX_DATAGRAM_BYTES for d, _, _ in pair.network.sent)


def test_delivery_survives_rekeys() -> None:
    """Rekeying every few seconds of traffic loses and repeats nothing."""
    config = ProtocolConfig(rekey_after_s=3.0, key_grace_s=1.0)
    pair = make_pair(config, **BAD_NETWORK)
    session_id = pair.connect()
    pump_both_ways(pair, session_id, 3_000)
    assert_exactly_once_in_order(pair, 3_000)
    rekeys = [e for e in pair.server_events if isinstance(e, events.SessionRekeyed)]
    assert len(rekeys) >= 3
    assert [e.epoch for e in rekeys] == list(range(1, len(rekeys) + 1))


def test_delivery_survives_rekeys_by_datagram_count() -> None:
    """A rekey is also started after rekey_after_datagrams, without losing anything."""
    config = ProtocolConfig(rekey_after_datagrams=200)
    pair = make_pair(config, **BAD_NETWORK)
    session_id = pair.connect()
    pump_both_ways(pair, session_id, 2_000)
    assert_exactly_once_in_order(pair, 2_000)
    assert any(isinstance(e, events.SessionRekeyed) for e in pair.client_events)


def test_delivery_survives_client_address_change() -> None:
    """The client moves to a new address mid-stream (NAT rebinding, roaming): the
    server follows the session, not the address, and nothing is lost or repeated."""
    pair = make_pair(**BAD_NETWORK)
    session_id = pair.connect()
    old_addr = pair.client_addr
    new_addr = ("127.0.0.3", 50000)

    def maybe_roam() -> None:
        if pair.client_addr == old_addr and len(received(pair.server_events)) >= 1500:
            pair.client_addr = new_addr

    pump_both_ways(pair, session_id, 3_000, on_progress=maybe_roam)
    assert_exactly_once_in_order(pair, 3_000)
    roams = [e for e in pair.server_events if isinstance(e, events.SessionRoamed)]
    assert roams and roams[-1].new_addr == new_addr
    assert pair.server.session_address(session_id) == new_addr


def test_largest_message_fits_one_datagram_and_larger_is_refused() -> None:
    """A MAX_PAYLOAD_BYTES message travels in one datagram of at most 1200 bytes, with
    an acknowledgement beside it; one byte more is refused at send() with a clear error."""
    pair = make_pair(loss=0.3, delay_s=0.01, jitter_s=0.02)
    session_id = pair.connect()
    big = bytes(range(256)) * 3 + b"x" * (MAX_PAYLOAD_BYTES - 768)
    for _ in range(20):
        pair.client.send(big, pair.now)
        pair.server.send(session_id, big, pair.now)
    pair.run(lambda: len(received(pair.client_events)) == 20 and pair.client.idle, 600)
    assert received(pair.server_events) == [big] * 20
    assert max(len(d) for d, _, _ in pair.network.sent) <= MAX_DATAGRAM_BYTES
    with pytest.raises(MessageTooLarge):
        pair.client.send(big + b"!", pair.now)


def test_messages_sent_before_the_handshake_completes_are_delivered() -> None:
    """send() right after connect() queues; the messages go once the keys exist."""
    pair = make_pair(**BAD_NETWORK)
    pair.client.connect(pair.now)
    for i in range(50):
        pair.client.send(b"early %d" % i, pair.now)
    pair.run(lambda: len(received(pair.server_events)) == 50, 600)
    assert received(pair.server_events) == [b"early %d" % i for i in range(50)]


def test_queue_is_bounded() -> None:
    """The send queue holds send_window + send_queue_max messages; then QueueFull."""
    config = ProtocolConfig(send_window=4, send_queue_max=6)
    pair = make_pair(config)
    pair.client.connect(pair.now)
    for i in range(10):
        pair.client.send(b"%d" % i, pair.now)
    with pytest.raises(QueueFull):
        pair.client.send(b"one too many", pair.now)


def test_silent_peer_turns_unacknowledged_messages_into_not_delivered_events() -> None:
    """When the server vanishes, the client's session times out and each message it
    still held is reported as not delivered, with its payload: never a silent loss."""
    pair = make_pair()
    pair.connect()
    pair.network.loss = 1.0
    ids = [pair.client.send(b"lost %d" % i, pair.now) for i in range(3)]
    pair.run(lambda: any(isinstance(e, events.SessionEnded) for e in pair.client_events), 120)
    not_delivered = [e for e in pair.client_events if isinstance(e, events.MessageNotDelivered)]
    assert [e.message_id for e in not_delivered] == ids
    assert [e.payload for e in not_delivered] == [b"lost 0", b"lost 1", b"lost 2"]
    ended = [e for e in pair.client_events if isinstance(e, events.SessionEnded)]
    assert ended[0].reason == "timeout"
    assert pair.now - START <= ProtocolConfig().session_expiry_s + 5


def test_message_never_acknowledged_by_a_live_peer_gives_up() -> None:
    """A peer that keeps the session alive but never acknowledges (here: it refuses
    every message by rate limit) makes the sender give up after give_up_s and say so."""
    config = ProtocolConfig(message_rate_per_s=1e-9, message_burst=1, give_up_s=20.0)
    pair = make_pair(config)
    pair.connect()
    pair.client.send(b"accepted", pair.now)
    pair.client.send(b"refused", pair.now)
    pair.run(lambda: any(isinstance(e, events.SessionEnded) for e in pair.client_events), 120)
    not_delivered = [e for e in pair.client_events if isinstance(e, events.MessageNotDelivered)]
    assert [(e.payload, e.reason) for e in not_delivered] == [(b"refused", "give-up")]
    assert pair.server.stats["message-rate"] > 0
    assert received(pair.server_events) == [b"accepted"]


def test_keepalive_and_expiry_fire_on_the_fake_clock() -> None:
    """An idle session sends keepalives every keepalive_s, which keep it alive; once
    the peer falls silent the session ends after session_expiry_s."""
    config = ProtocolConfig()
    pair = make_pair(config)
    pair.connect()
    start = pair.now
    sent_before = len(pair.network.sent)
    pair.run(lambda: pair.now >= start + 60, 120)
    # Nothing was said: every datagram of the minute is a keepalive (or its ack).
    from_client = [d for d, src, _ in pair.network.sent[sent_before:] if src == pair.client_addr]
    assert len(from_client) >= 60 // config.keepalive_s - 1
    assert not any(isinstance(e, events.SessionEnded) for e in pair.client_events)
    assert len(pair.server) == 1

    pair.network.loss = 1.0
    silent_from = pair.now
    pair.run(lambda: any(isinstance(e, events.SessionEnded) for e in pair.server_events), 120)
    ended = [e for e in pair.server_events if isinstance(e, events.SessionEnded)]
    assert ended[0].reason == "timeout"
    assert pair.now - silent_from <= config.session_expiry_s + config.keepalive_s
    assert len(pair.server) == 0


def test_close_tells_the_peer() -> None:
    """close() sends a CLOSE frame: the server ends the session at once ("closed")."""
    pair = make_pair()
    session_id = pair.connect()
    pair.client.close(pair.now)
    pair.run(lambda: any(isinstance(e, events.SessionEnded) for e in pair.server_events), 5)
    assert [e for e in pair.server_events if isinstance(e, events.SessionEnded)] == [
        events.SessionEnded(session_id, "closed")
    ]


def test_half_open_sessions_cannot_push_members_past_max_sessions() -> None:
    """Several handshakes answered while there was room, then all confirmed: only
    max_sessions become sessions; the rest stay half-open (silence) and expire."""
    psk = Fernet.generate_key()
    server = ServerEndpoint(psk, max_sessions=2)
    clients = [ClientEndpoint(psk) for _ in range(5)]
    now = START
    for i, client in enumerate(clients):
        client.connect(now)
        for data in client.datagrams_to_send(now):
            server.receive_datagram(data, ("127.0.0.1", 3000 + i), now)
    for data, addr in server.datagrams_to_send(now):
        clients[addr[1] - 3000].receive_datagram(data, now)
    for i, client in enumerate(clients):
        for data in client.datagrams_to_send(now):  # key confirmation
            server.receive_datagram(data, ("127.0.0.1", 3000 + i), now)
    started = []
    while (event := server.next_event()) is not None:
        if isinstance(event, events.SessionStarted):
            started.append(event)
    assert len(started) == 2
    assert server.stats["server-full"] == 3
    server.handle_timer(now + ProtocolConfig().pending_session_s + 1)
    server.datagrams_to_send(now + ProtocolConfig().pending_session_s + 1)
    assert len(server) == 2


def test_a_keepalive_due_with_a_rekey_still_goes_out() -> None:
    """When a rekey's message 1 and a keepalive fall due in the same instant, the
    client sends both: the handshake message does not count as the keepalive (it is
    not authenticated data, so it would not keep the session alive)."""
    config = ProtocolConfig(keepalive_s=10.0, rekey_after_s=10.0)
    psk = Fernet.generate_key()
    server, client = ServerEndpoint(psk, config), ClientEndpoint(psk, config)
    now = 1_800_000_000.0
    client.connect(now)
    for _ in range(3):  # handshake, confirmation
        for data in client.datagrams_to_send(now):
            server.receive_datagram(data, ("127.0.0.2", 4000), now)
        for data, _ in server.datagrams_to_send(now):
            client.receive_datagram(data, now)
    assert client.connected
    client.datagrams_to_send(now)
    later = now + 10.0
    assert client.get_timer() == later
    client.handle_timer(later)
    kinds = [data[0] for data in client.datagrams_to_send(later)]
    assert kinds == [wire.HANDSHAKE_INIT, wire.DATA]
