"""The core's byte budgets (issue 9, finding 3): a session's send queue and receive
buffer are bounded in bytes as well as in messages, and stay correct at the bound."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.fernet import Fernet
from sim import LossyNetwork, Pair, received

from udpchat.core.endpoint import ClientEndpoint, QueueFull, ServerEndpoint
from udpchat.core.limits import MESSAGE_OVERHEAD_BYTES, ProtocolConfig
from udpchat.core.reliability import ReceiveBuffer, SendQueue
from udpchat.core.wire import Ack

KB = 1000


def cost(payload_bytes: int) -> int:
    return payload_bytes + MESSAGE_OVERHEAD_BYTES


def test_send_queue_refuses_a_message_beyond_its_bytes() -> None:
    """Large messages meet send_queue_bytes long before the message count: the one
    that would go beyond it raises QueueFull and is not queued; small ones still fit
    the bytes left."""
    config = ProtocolConfig(send_queue_bytes=10 * cost(KB))
    queue = SendQueue(config)
    for i in range(10):
        queue.push(b"x" * KB, i)
    assert queue.charged_bytes == 10 * cost(KB)
    with pytest.raises(QueueFull):
        queue.push(b"x" * KB, 10)
    assert len(queue) == 10
    config = ProtocolConfig(send_queue_bytes=10 * cost(KB) + cost(10))
    queue = SendQueue(config)
    for i in range(10):
        queue.push(b"x" * KB, i)
    queue.push(b"y" * 10, 10)
    with pytest.raises(QueueFull):
        queue.push(b"y", 11)


def test_send_queue_bytes_count_the_fast_path_and_come_back_with_acks() -> None:
    """Messages sent straight into flight count too; acknowledged ones give their
    bytes back, and drain() empties the count."""
    queue = SendQueue(ProtocolConfig(send_queue_bytes=4 * cost(KB)))
    for i in range(4):
        assert queue.push_sent(b"x" * KB, i, False, now=1.0) is not None
    with pytest.raises(QueueFull):
        queue.push_sent(b"x" * KB, 4, False, now=1.0)
    queue.on_ack(Ack(2, ()), now=1.1)
    assert queue.charged_bytes == 2 * cost(KB)
    queue.push(b"x" * KB, 4)
    queue.push(b"x" * KB, 5)
    with pytest.raises(QueueFull):
        queue.push(b"x", 6)
    queue.on_ack(Ack(4, ((4, 4),)), now=1.2)  # overlapping names are counted once
    assert queue.charged_bytes == 2 * cost(KB)
    queue.drain()
    assert queue.charged_bytes == 0


def test_receive_buffer_keeps_out_of_order_messages_within_its_bytes() -> None:
    """Out-of-order messages fit until receive_buffer_bytes; the next expected one
    always fits (it is delivered at once), and delivery gives the bytes back."""
    buffer = ReceiveBuffer(ProtocolConfig(receive_buffer_bytes=3 * cost(KB)))
    for seq in (1, 2, 3):
        assert buffer.has_room(seq, b"x" * KB)
        buffer.add(seq, b"x" * KB)
    assert buffer.charged_bytes == 3 * cost(KB)
    assert not buffer.has_room(4, b"x" * KB)
    assert buffer.has_room(0, b"x" * KB)
    assert len(buffer.add(0, b"x" * KB)) == 4
    assert buffer.charged_bytes == 0
    assert buffer.next_expected == 4


def make_pair(config: ProtocolConfig, **network: Any) -> Pair:
    psk = Fernet.generate_key()
    return Pair(ServerEndpoint(psk, config), ClientEndpoint(psk, config), LossyNetwork(**network))


def test_messages_beyond_the_receive_budget_are_not_acknowledged_and_come_again() -> None:
    """A peer that sends ahead of a gap fills the receive budget: the rest is dropped
    as receive-buffer-full, unacknowledged, so the sender keeps it and retransmits;
    once the gap is filled, everything arrives once, in order."""
    config = ProtocolConfig(receive_buffer_bytes=4 * cost(KB), send_window=32)
    pair = make_pair(config, seed=7)
    pair.connect()
    pair.run(lambda: pair.network.next_arrival() is None, 10)
    payloads = [b"%04d" % i + b"x" * (KB - 4) for i in range(20)]
    for payload in payloads:
        pair.client.send(payload, pair.now)
    datagrams = pair.client.datagrams_to_send(pair.now)
    assert len(datagrams) == 20  # one message each
    for datagram in datagrams[1:]:  # the first is lost: a gap at seq 0
        pair.server.receive_datagram(datagram, pair.client_addr, pair.now)
    assert pair.server.stats["receive-buffer-full"] == 15
    assert received(pair.server_events) == []
    pair.run(lambda: len(received(pair.server_events)) == 20 and pair.client.idle, 120)
    assert received(pair.server_events) == payloads


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exactly_once_in_order_under_loss_with_small_byte_budgets(seed: int) -> None:
    """With budgets of a few large messages each way, loss, duplicates and reordering,
    every message arrives exactly once, in order, both ways; QueueFull only asks the
    sender to wait."""
    config = ProtocolConfig(send_queue_bytes=8 * cost(900), receive_buffer_bytes=3 * cost(900))
    pair = make_pair(config, seed=seed)
    session_id = pair.connect()
    network = pair.network
    network.loss, network.duplicate, network.jitter_s = 0.2, 0.1, 0.05
    count = 120
    up = [b"up %03d " % i + b"u" * 892 for i in range(count)]
    down = [b"dn %03d " % i + b"d" * 892 for i in range(count)]
    sent = {"up": 0, "down": 0}

    def feed() -> None:
        while sent["up"] < count:
            try:
                pair.client.send(up[sent["up"]], pair.now)
            except QueueFull:
                break
            sent["up"] += 1
        while sent["down"] < count:
            try:
                pair.server.send(session_id, down[sent["down"]], pair.now)
            except QueueFull:
                break
            sent["down"] += 1

    def done() -> bool:
        return (
            len(received(pair.server_events)) == count
            and len(received(pair.client_events)) == count
        )

    pair.run(done, max_seconds=3600, before_step=feed)
    assert received(pair.server_events) == up
    assert received(pair.client_events) == down
    drops = pair.server.stats["receive-buffer-full"] + pair.client.stats["receive-buffer-full"]
    assert drops > 0, "the receive budgets were met"
