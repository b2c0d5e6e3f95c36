"""A room's line is one record in every member's send queue (reliability.Sent): a
loss, a retransmission or an acknowledgement in one queue never shows in another."""

from __future__ import annotations

from udpchat.core.limits import MESSAGE_OVERHEAD_BYTES, ProtocolConfig
from udpchat.core.reliability import Outgoing, SendQueue, Sent
from udpchat.core.wire import Ack

CONFIG = ProtocolConfig(min_rto_s=0.2, initial_rto_s=0.2, sealed_ack_delay_s=0.0)


def test_a_line_lost_in_one_queue_is_retransmitted_there_and_nowhere_else() -> None:
    """The RTO fires in one member's queue only: its copy becomes an Outgoing due for
    retransmission; the other member's stays the shared record, in flight, untouched."""
    line = Sent(7, b"hello room", True, now=1.0)
    slow, fast = SendQueue(CONFIG), SendQueue(CONFIG)
    assert slow.push_shared(line) == 0
    assert fast.push_shared(line) == 0
    assert fast.on_ack(Ack(1), now=1.05) == [line]
    assert fast.idle and fast.charged_bytes == 0
    assert slow.charged_bytes == len(b"hello room") + MESSAGE_OVERHEAD_BYTES

    deadline = slow.next_deadline()
    assert deadline is not None
    slow.on_timer(deadline)
    (again,) = list(slow.due(deadline))
    assert isinstance(again, Outgoing)
    assert (again.seq, again.message_id, again.payload, again.sealed) == (0, 7, b"hello room", True)
    assert again.first_sent == 1.0
    slow.sent(again, deadline)
    assert again.transmissions == 2 and not again.lost
    assert (line.lost, line.transmissions, line.last_sent) == (False, 1, 1.0)

    assert slow.on_ack(Ack(1), now=deadline + 0.01) == [again]
    assert slow.idle and slow.charged_bytes == 0


def test_a_line_sent_before_an_acknowledged_one_is_lost_in_that_queue_only() -> None:
    """RACK (PROTOCOL.md 5.5): acknowledging a later line marks the earlier one lost in
    the acknowledging member's queue; the same record in another queue is not."""
    first, second = Sent(1, b"one", True, now=1.0), Sent(2, b"two", True, now=1.5)
    a, b = SendQueue(CONFIG), SendQueue(CONFIG)
    for line in (first, second):
        assert a.push_shared(line) is not None
        assert b.push_shared(line) is not None
    assert a.on_ack(Ack(0, ((1, 2),)), now=1.6) == [second]
    assert a.push_shared(Sent(3, b"three", True, now=1.6)) is None  # a loss waits
    (lost,) = list(a.due(1.6))
    assert isinstance(lost, Outgoing) and (lost.seq, lost.message_id) == (0, 1)
    a.sent(lost, 1.6)
    assert not first.lost and not list(b.due(1.6))
    assert b.on_ack(Ack(2), now=1.6) == [first, second]
    assert a.on_ack(Ack(2), now=1.7) == [lost]
    assert a.idle and b.idle


def test_an_ack_of_everything_in_flight_leaves_the_waiting_messages_waiting() -> None:
    """With the window full, later messages wait; an ack of everything in flight (the
    one an ack of everything queued would be, too) frees the window for them, in
    order, and the queue numbers on from where it was."""
    queue = SendQueue(ProtocolConfig(send_window=2))
    for i in range(2):
        assert queue.push_shared(Sent(i, b"line", True, now=1.0)) == i
    assert queue.push_shared(Sent(2, b"line", True, now=1.0)) is None  # window full
    queue.push(b"line", 2, sealed=True)
    queue.push(b"line", 3, sealed=True)
    assert len(queue.on_ack(Ack(2), now=1.1)) == 2
    sent = []
    for message in queue.due(1.1):
        queue.sent(message, 1.1)
        sent.append(message.seq)
    assert sent == [2, 3]
    assert len(queue.on_ack(Ack(4), now=1.2)) == 2 and queue.idle
    assert queue.push_shared(Sent(4, b"line", True, now=1.3)) == 4
    assert queue.push_shared(Sent(5, b"line", True, now=1.3)) == 5
    assert queue.push_shared(Sent(6, b"line", True, now=1.3)) is None  # window of 2
