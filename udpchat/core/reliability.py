"""Reliable, ordered, exactly-once delivery of messages over lossy datagrams.

SendQueue numbers messages, keeps them until acknowledged and retransmits them on an
RFC 6298 timer; ReceiveBuffer puts arriving messages back in order, drops duplicates
and produces cumulative + selective acknowledgements. Both are independent of keys,
so a rekey never loses or repeats a message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import ClassVar

from udpchat.core.limits import MESSAGE_OVERHEAD_BYTES, ProtocolConfig
from udpchat.core.wire import Ack


class QueueFull(Exception):
    """send() was called with send_window + send_queue_max messages already pending,
    or with send_queue_bytes that the message would go beyond."""


class MessageTooLarge(ValueError):
    """The payload does not fit one datagram (see MAX_PAYLOAD_BYTES)."""


class RttEstimator:
    """Smoothed RTT and retransmission timeout as in RFC 6298, clamped to the config."""

    __slots__ = ("_config", "srtt", "rttvar", "rto")

    def __init__(self, config: ProtocolConfig) -> None:
        self._config = config
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = config.initial_rto_s

    def sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        rto = self.srtt + max(0.01, 4 * self.rttvar)
        self.rto = min(max(rto, self._config.min_rto_s), self._config.max_rto_s)


@dataclass(slots=True)
class Outgoing:
    """One message in the send queue."""

    seq: int
    message_id: int
    payload: bytes
    sealed: bool = False  # travels in ENVELOPEs, never in DATA (and the reverse)
    first_sent: float | None = None
    last_sent: float = 0.0
    transmissions: int = 0
    lost: bool = True  # due for (re)transmission


class Sent:
    """A message transmitted once, at `first_sent`, and not lost since: what the fast
    path (SendQueue.push_shared) files in flight instead of an Outgoing.

    A room's line is one Sent for every member it goes to at once
    (ServerEndpoint.send_many): what differs per member, the sequence number, is the
    key it is filed under in each queue. An Outgoing per member per line was most of
    what the send queue cost a busy room's server (an object per delivery). It reads
    like an Outgoing; a queue replaces it with one (outgoing()) the moment it would
    change: lost, retransmitted.
    """

    __slots__ = ("message_id", "payload", "sealed", "first_sent", "last_sent", "cost")

    transmissions: ClassVar[int] = 1
    lost: ClassVar[bool] = False

    def __init__(self, message_id: int, payload: bytes, sealed: bool, now: float) -> None:
        self.message_id = message_id
        self.payload = payload
        self.sealed = sealed
        self.first_sent = now
        self.last_sent = now
        self.cost = len(payload) + MESSAGE_OVERHEAD_BYTES  # against send_queue_bytes

    def outgoing(self, seq: int, lost: bool) -> Outgoing:
        """The same message, in flight in one queue as `seq`, as an Outgoing of its own."""
        first = self.first_sent
        return Outgoing(seq, self.message_id, self.payload, self.sealed, first, first, 1, lost)


#: What a queue holds in flight: a message of its own, or its share of a room's line.
InFlight = Outgoing | Sent
_PAYLOAD = attrgetter("payload")  # of an InFlight


class SendQueue:
    """Messages waiting for their first transmission or for an acknowledgement.

    Loss is detected two ways, as in TCP with SACK and QUIC: a message sent before
    one that was acknowledged, and older than 9/8 of the smoothed RTT, is lost; and
    when the single retransmission timer (RTO) fires, everything in flight is. Each
    RTO doubles the next one (exponential backoff) until an acknowledgement of new
    data shows the path works again.
    """

    __slots__ = (
        "_config",
        "rtt",
        "_next_seq",
        "_waiting",
        "_in_flight",
        "_oldest",
        "_sent_below",
        "_lost",
        "_sealed",
        "_sealed_ack_delay_s",
        "_backoff",
        "rto_at",
        "_bytes",
        "_window",
        "_max_bytes",
    )

    def __init__(self, config: ProtocolConfig) -> None:
        self._config = config
        self.rtt = RttEstimator(config)
        self._next_seq = 0
        # A list, not a deque: an empty deque costs about 600 bytes, and a server holds
        # one per session (10,000 idle sessions within 100 MB); it is short and
        # mostly empty, since a message goes straight into flight when it can.
        self._waiting: list[Outgoing] = []
        self._in_flight: dict[int, InFlight] = {}  # seq -> message, in seq order
        # No sequence number below this is in flight. Found by stepping forward, not
        # by iterating the dict: a dict whose front was popped walks over the holes
        # first, which was the hottest line of the server's fan-out.
        self._oldest = 0
        self._sent_below = 0  # 1 + the highest sequence number ever transmitted
        self._lost = 0  # messages in _in_flight marked lost (due for retransmission)
        self._sealed = False  # has carried sealed messages: the peer acks them late
        self._sealed_ack_delay_s = config.sealed_ack_delay_s  # ... this late at most
        self._backoff = 0
        self.rto_at: float | None = None
        # What the queued messages cost (payload + MESSAGE_OVERHEAD_BYTES each),
        # against send_queue_bytes.
        self._bytes = 0
        self._window = config.send_window  # the config's, read once per message sent
        self._max_bytes = config.send_queue_bytes

    def __len__(self) -> int:
        return len(self._waiting) + len(self._in_flight)

    @property
    def charged_bytes(self) -> int:
        """The memory the queue is charged with (see ProtocolConfig.send_queue_bytes)."""
        return self._bytes

    def _charge(self, payload: bytes) -> None:
        """Count a new message against both bounds, or raise QueueFull."""
        config = self._config
        if len(self) >= config.send_window + config.send_queue_max:
            raise QueueFull("send queue is full")
        cost = len(payload) + MESSAGE_OVERHEAD_BYTES
        if self._bytes + cost > config.send_queue_bytes:
            raise QueueFull("send queue is full (bytes)")
        self._bytes += cost

    def push(self, payload: bytes, message_id: int, sealed: bool = False) -> None:
        self._charge(payload)
        self._waiting.append(Outgoing(self._next_seq, message_id, payload, sealed))
        self._next_seq += 1
        self._sealed = self._sealed or sealed

    def push_sent(self, payload: bytes, message_id: int, sealed: bool, now: float) -> int | None:
        """Fast path: if nothing waits or is due for retransmission and the window has
        room, the message goes straight into flight, transmitted now (the caller puts
        it into a datagram at once); returns its sequence number. None otherwise: use
        push() and due(). Raises QueueFull like push()."""
        return self.push_shared(Sent(message_id, payload, sealed, now))

    def push_shared(self, message: Sent) -> int | None:
        """push_sent() of a message transmitted at message.first_sent, which other
        queues may hold too (a room's line): it is filed as it is, not copied.

        One member of a busy room costs the server this once per line, so it is
        _window_end() and _charge() written out: with nothing waiting, the window
        bounds the queue's length, and only the byte budget is left to check."""
        if self._waiting or self._lost:
            return None
        seq = self._next_seq
        in_flight = self._in_flight
        if in_flight:
            oldest = self._oldest
            while oldest not in in_flight:
                oldest += 1
            self._oldest = oldest
            if seq >= oldest + self._window:
                return None
        cost = message.cost
        if self._bytes + cost > self._max_bytes:
            raise QueueFull("send queue is full (bytes)")
        self._bytes += cost
        in_flight[seq] = message
        if message.sealed:
            self._sealed = True
        self._next_seq = self._sent_below = seq + 1
        if self.rto_at is None:
            self.rto_at = message.first_sent + self._rto()
        return seq

    def peer_acks_lazily(self) -> None:
        """The peer may now hold its acks of sealed messages sealed_ack_delay_lazy_s
        (extension "lazy-acks", PROTOCOL.md 11.8): the timeout waits for them."""
        self._sealed_ack_delay_s = max(
            self._sealed_ack_delay_s, self._config.sealed_ack_delay_lazy_s
        )

    def _oldest_in_flight(self) -> int | None:
        """The lowest sequence number in flight (amortised O(1): it only moves up)."""
        in_flight = self._in_flight
        if not in_flight:
            return None
        seq = self._oldest
        while seq not in in_flight:
            seq += 1
        self._oldest = seq
        return seq

    def _window_end(self) -> int:
        """Sequence numbers below this may be in flight (window counted from the oldest)."""
        oldest = self._oldest_in_flight()
        if oldest is None:
            oldest = self._waiting[0].seq if self._waiting else self._next_seq
        return oldest + self._config.send_window

    def due(self, now: float) -> Iterator[Outgoing]:
        """Messages to transmit now: retransmissions first, then new ones in the window.
        Each one yielded must be passed to sent() or unsend() before the next."""
        if self._lost:  # rare: only after a loss; otherwise no walk over the window
            # (A Sent is never lost: it is replaced by an Outgoing first.)
            in_flight = self._in_flight.values()
            for message in [m for m in in_flight if isinstance(m, Outgoing) and m.lost]:
                yield message
        end = self._window_end()
        waiting = self._waiting
        while waiting and waiting[0].seq < end:
            message = waiting.pop(0)  # short: the window is 64, the queue mostly empty
            self._in_flight[message.seq] = message
            self._lost += 1  # in flight and due: sent() or unsend() settles it
            yield message

    def has_due(self, now: float) -> bool:
        return self._lost > 0 or bool(self._waiting and self._waiting[0].seq < self._window_end())

    def _rto(self) -> float:
        rto = self.rtt.rto
        if self._sealed:
            # The peer may hold its ack of a sealed message sealed_ack_delay_s: a
            # timeout near that delay would fire on every ack that comes a little late
            # and resend everything in flight to every member (PROTOCOL.md 5.5).
            rto = max(rto, self._sealed_ack_delay_s + self._config.min_rto_s)
        return min(rto * 2**self._backoff, self._config.max_rto_s)

    def sent(self, message: Outgoing, now: float) -> None:
        """Record a transmission; arm the retransmission timer if it is not running."""
        if message.first_sent is None:
            message.first_sent = now
            self._sent_below = max(self._sent_below, message.seq + 1)
        message.last_sent = now
        message.transmissions += 1
        if message.lost:
            message.lost = False
            self._lost -= 1
        if self.rto_at is None:
            self.rto_at = now + self._rto()

    def unsend(self, message: Outgoing) -> None:
        """A message taken from due() did not fit the datagram: it stays due."""
        if not message.lost:
            message.lost = True
            self._lost += 1

    def on_timer(self, now: float) -> None:
        """The RTO fired: everything in flight is lost; back off."""
        if self.rto_at is None or self.rto_at > now:
            return
        in_flight = self._in_flight
        for seq, message in list(in_flight.items()):
            if isinstance(message, Outgoing):
                message.lost = True
            else:
                in_flight[seq] = message.outgoing(seq, lost=True)
        self._lost = len(in_flight)
        if self._rto() < self._config.max_rto_s:
            self._backoff += 1
        self.rto_at = None  # re-armed by the retransmissions

    def acks_only_sent(self, ack: Ack) -> bool:
        """False for an ACK of a sequence number never transmitted (PROTOCOL.md 5.4):
        nobody received it, so whoever sent the ACK is guessing. Taken at face value,
        such "blind" ACKs would open the window and speed up sending to an address
        that may not even be the peer's (an amplification, issue 9)."""
        limit = self._sent_below
        return ack.cumulative <= limit and all(end <= limit for _, end in ack.ranges)

    def on_ack(self, ack: Ack, now: float) -> list[InFlight]:
        """Remove acknowledged messages; take an RTT sample (Karn: first sends only).

        Costs what it acknowledges, not the window: the cumulative part is taken from
        the front (in_flight is in sequence order) and each SACK range is looked up.
        Each acknowledged message is looked at once (a server's members acknowledge
        16 room lines at a time, and this is most of what an ACK costs it).
        """
        in_flight = self._in_flight
        acked: list[InFlight]
        if ack.cumulative >= self._next_seq and not self._waiting:
            # Everything ever queued is in flight and acknowledged (the usual ack of a
            # busy room's member): taken at once; the ranges, beyond the cumulative
            # part, name nothing in flight; and whatever goes into flight next is
            # numbered from _next_seq on, so _oldest can jump there (no walk later).
            acked = list(in_flight.values())
            if not acked:
                return acked
            in_flight.clear()
            self._oldest = self._next_seq
            # What follows the else, for a window now empty: the lost messages are
            # all gone with it, RACK has nothing left to look at, the timer stops;
            # the RTT sample is the newest message sent once (nearly always the last).
            freed = sum(map(len, map(_PAYLOAD, acked)))
            self._bytes -= freed + len(acked) * MESSAGE_OVERHEAD_BYTES
            self._lost = 0
            for newest in reversed(acked):
                if newest.transmissions == 1:
                    self.rtt.sample(now - newest.last_sent)
                    break
            self._backoff = 0
            self.rto_at = None
            return acked
        else:
            acked = []
            pop = in_flight.pop
            keep = acked.append
            oldest = self._oldest_in_flight()
            if oldest is not None:
                # Everything in flight lies within one window of the oldest: an ack of
                # more (even of messages never sent) costs no more than the window.
                for seq in range(oldest, min(ack.cumulative, oldest + self._window)):
                    message = pop(seq, None)
                    if message is not None:
                        keep(message)
            for start, end in ack.ranges:
                if end - start > len(in_flight):
                    named = [s for s in in_flight if start <= s < end]
                else:
                    named = [s for s in range(start, end) if s in in_flight]
                for seq in named:
                    keep(pop(seq))
        if not acked:
            return acked
        newest_clean: InFlight | None = None
        newest_sent = 0.0
        freed = len(acked) * MESSAGE_OVERHEAD_BYTES
        lost = 0
        for message in acked:
            freed += len(message.payload)
            if message.lost:
                lost += 1
            if message.last_sent > newest_sent:
                newest_sent = message.last_sent
            if message.transmissions == 1:
                newest_clean = message
        self._bytes -= freed
        self._lost -= lost
        if newest_clean is not None:
            self.rtt.sample(now - newest_clean.last_sent)
        self._backoff = 0
        # Lost (RACK-like, PROTOCOL.md 5.5): sent before something now acknowledged,
        # and older than 9/8 RTT. Any message in flight can be, retransmissions
        # included, so the whole window (at most send_window) is looked at.
        threshold = 1.125 * (self.rtt.srtt or self.rtt.rto)
        for seq, message in in_flight.items():
            if (
                not message.lost
                and message.last_sent < newest_sent
                and message.last_sent + threshold <= now
            ):
                if isinstance(message, Outgoing):
                    message.lost = True
                else:  # a value replaced, not a key added: the walk goes on
                    in_flight[seq] = message.outgoing(seq, lost=True)
                self._lost += 1
        self.rto_at = now + self._rto() if in_flight else None
        return acked

    def given_up(self, now: float) -> bool:
        # Messages are first sent in sequence order, so the oldest in flight (the
        # first) is the first to reach give_up_s.
        oldest = self._oldest_in_flight()
        first = None if oldest is None else self._in_flight[oldest]
        return (
            first is not None
            and first.first_sent is not None
            and first.first_sent + self._config.give_up_s <= now
        )

    def drain(self) -> list[InFlight]:
        """Everything still unacknowledged, in order; the queue is empty afterwards."""
        rest: list[InFlight] = [*self._in_flight.values(), *self._waiting]
        self._in_flight.clear()
        self._waiting.clear()
        self._lost = 0
        self._bytes = 0
        self.rto_at = None
        return rest

    def next_deadline(self) -> float | None:
        """When on_timer or given_up need a look (lost messages are flushed at once)."""
        deadline = self.rto_at
        if not self._in_flight:  # a client that only listens: asked after every line
            return deadline
        oldest = self._oldest_in_flight()
        if oldest is not None:
            first = self._in_flight[oldest]
            if first.first_sent is not None:
                # The oldest in flight was sent first (sequence order): it gives up first.
                give_up = first.first_sent + self._config.give_up_s
                if deadline is None or give_up < deadline:
                    deadline = give_up
        return deadline

    @property
    def idle(self) -> bool:
        return not self._in_flight and not self._waiting


class ReceiveBuffer:
    """Reorders arriving messages and remembers what to acknowledge. What it holds is
    bounded twice: receive_window sequence numbers ahead of the next expected one,
    and receive_buffer_bytes of memory (payload + MESSAGE_OVERHEAD_BYTES each)."""

    __slots__ = ("_window", "_max_ranges", "_max_bytes", "next_expected", "_buffered", "_bytes")

    def __init__(self, config: ProtocolConfig) -> None:
        self._window = config.receive_window
        self._max_ranges = config.max_sack_ranges
        self._max_bytes = config.receive_buffer_bytes
        self.next_expected = 0
        self._buffered: dict[int, tuple[bytes, bool]] = {}  # seq -> (payload, sealed)
        self._bytes = 0  # what the buffered messages are charged with

    @property
    def charged_bytes(self) -> int:
        return self._bytes

    def has_room(self, seq: int, payload: bytes) -> bool:
        """Whether a new message (see is_new) fits the byte budget. The next expected
        one always does: it is delivered at once, and never waits in the buffer, so
        the stream always moves on however full the buffer is."""
        return (
            seq == self.next_expected
            or self._bytes + len(payload) + MESSAGE_OVERHEAD_BYTES <= self._max_bytes
        )

    def is_new(self, seq: int) -> bool:
        """True for a message not seen before and inside the receive window."""
        return (
            self.next_expected <= seq < self.next_expected + self._window
            and seq not in self._buffered
        )

    def is_duplicate(self, seq: int) -> bool:
        return seq < self.next_expected or seq in self._buffered

    def add(self, seq: int, payload: bytes, sealed: bool = False) -> list[tuple[bytes, bool]]:
        """Store a new message (see is_new); return those now deliverable in order, as
        (payload, sealed)."""
        if seq != self.next_expected:
            self._buffered[seq] = (payload, sealed)
            self._bytes += len(payload) + MESSAGE_OVERHEAD_BYTES
            return []
        ready = [(payload, sealed)]
        self.next_expected += 1
        buffered = self._buffered
        if not buffered:  # in order, nothing waiting: nearly every message
            return ready
        while self.next_expected in buffered:
            message = buffered.pop(self.next_expected)
            self._bytes -= len(message[0]) + MESSAGE_OVERHEAD_BYTES
            ready.append(message)
            self.next_expected += 1
        return ready

    def ack(self) -> Ack:
        ranges: list[tuple[int, int]] = []
        for seq in sorted(self._buffered):
            if ranges and ranges[-1][1] == seq:
                ranges[-1] = (ranges[-1][0], seq + 1)
            elif len(ranges) < self._max_ranges:
                ranges.append((seq, seq + 1))
            else:
                break
        return Ack(self.next_expected, tuple(ranges))
