"""Every timer and limit of the udpchat wire protocol, in one place.

docs/PROTOCOL.md quotes these values; tests shrink them through ProtocolConfig to
exercise rekeys, expiry and give-up quickly on a fake clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

#: No datagram udpchat sends is larger than this (fits any path MTU >= 1280).
MAX_DATAGRAM_BYTES = 1200
#: Largest application message (one reliable message, one datagram, never split).
MAX_PAYLOAD_BYTES = 1000
#: What keeping one message costs beyond its payload, counted against the byte
#: budgets below (send_queue_bytes, receive_buffer_bytes): the object that holds it,
#: its sequence number and times, the bytes object's header and the dict entry.
#: Measured at about 220 bytes on CPython 3.11 (64-bit); rounded up.
MESSAGE_OVERHEAD_BYTES = 256

#: The idle timeout (session expiry) an operator or user may set, daemon and client
#: alike. Peers send a keepalive every 10 s, or a third of their own idle timeout if
#: that is shorter (keepalive_s()); a peer set much shorter than its partner would
#: still end a healthy idle session on the partner's silence, hence this floor.
IDLE_TIMEOUT_MIN_S = 15.0
IDLE_TIMEOUT_MAX_S = 3600.0
#: For the test suite only: with this environment variable set to "1", the daemon's
#: idle_timeout and the client's --idle-timeout accept down to
#: IDLE_TIMEOUT_TESTING_MIN_S, so end-to-end tests wait out a dead peer in seconds
#: (their sessions are kept busy, so the 10 s keepalive does not matter there).
TESTING_SHORT_IDLE_ENV = "UDPCHAT_TESTING_ALLOW_SHORT_IDLE_TIMEOUT"
IDLE_TIMEOUT_TESTING_MIN_S = 1.0


#: A peer sends a keepalive after this long without sending (ProtocolConfig.keepalive_s).
KEEPALIVE_MAX_S = 10.0


def keepalive_s(idle_timeout_s: float) -> float:
    """How long a peer whose own idle timeout is ``idle_timeout_s`` stays silent before
    it sends a keepalive: 10 s, or a third of that timeout when it is shorter, so that
    a peer set alike (a daemon and clients at 15 s, or tests at a few seconds) keeps a
    healthy idle session through two lost keepalives."""
    return min(KEEPALIVE_MAX_S, idle_timeout_s / 3)


def idle_timeout_floor_s(environ: Mapping[str, str]) -> float:
    """The lowest idle timeout allowed under ``environ`` (see TESTING_SHORT_IDLE_ENV)."""
    if environ.get(TESTING_SHORT_IDLE_ENV) == "1":
        return IDLE_TIMEOUT_TESTING_MIN_S
    return IDLE_TIMEOUT_MIN_S


@dataclass(frozen=True)
class ProtocolConfig:
    """Timers (seconds) and limits of one endpoint. Defaults are the protocol's."""

    #: A handshake message 1 whose Fernet timestamp is older than this is dropped.
    handshake_ttl_s: float = 30.0
    #: First handshake retry; doubles per retry up to handshake_retry_max_s.
    handshake_retry_s: float = 1.0
    handshake_retry_max_s: float = 8.0
    #: The initiator starts a new handshake when its keys are this old ...
    rekey_after_s: float = 120.0
    #: ... or after this many datagrams were sent or received under them.
    rekey_after_datagrams: int = 1 << 16
    #: Keys older than this are refused outright (a peer that never rekeys expires).
    reject_after_s: float = 300.0
    #: Replaced keys still decrypt stragglers for this long.
    key_grace_s: float = 10.0
    #: Send a keepalive when nothing was sent for this long (NAT-friendly: < 25 s).
    keepalive_s: float = KEEPALIVE_MAX_S
    #: A session with nothing authentic received for this long has ended.
    session_expiry_s: float = 30.0
    #: A responder session whose initiator never used its keys is forgotten after this.
    pending_session_s: float = 10.0
    #: Acknowledge in-order data after at most this delay (out-of-order: at once).
    ack_delay_s: float = 0.025
    #: Sealed room messages (extension room-keys) are acknowledged after at most this
    #: delay, or at once when this many are unacknowledged: for a server every ack
    #: from every member of a room is a wake-up, which cost more than the relaying.
    sealed_ack_delay_s: float = 0.5
    sealed_ack_every: int = 16
    #: The same once both peers negotiated "lazy-acks" (PROTOCOL.md 11.8): half the
    #: acks, so half the wake-ups, for a server relaying busy rooms. The sender's
    #: window (send_window) must stay above sealed_ack_every_lazy.
    sealed_ack_delay_lazy_s: float = 1.0
    sealed_ack_every_lazy: int = 32
    #: Retransmission timeout (RFC 6298 shape), clamped to [min, max].
    initial_rto_s: float = 1.0
    min_rto_s: float = 0.2
    max_rto_s: float = 8.0
    #: A message unacknowledged this long after its first transmission ends the
    #: session: its stream can no longer stay in order. Longer than
    #: session_expiry_s, so a silent peer ends the session first.
    give_up_s: float = 60.0
    #: Messages in flight, counted in sequence numbers from the oldest unacked one.
    send_window: int = 64
    #: Messages waiting behind the window; beyond it send() raises QueueFull.
    send_queue_max: int = 1024
    #: Memory of the whole send queue (waiting + in flight), each message counted as
    #: its payload + MESSAGE_OVERHEAD_BYTES; a message that would go beyond it raises
    #: QueueFull, like one beyond the message count. Without it a peer that
    #: acknowledges nothing held 1,088 messages of up to ~1 KB each (issue 9). 384
    #: KiB holds a whole room history (at most 64 KiB and 500 lines, see
    #: chat/rules.py: about 190 KiB counted) with room to spare, and about as many
    #: ordinary chat lines (~150 bytes) as the message count allows.
    send_queue_bytes: int = 384 * 1024
    #: Out-of-order messages buffered ahead of the next expected one.
    receive_window: int = 256
    #: Memory of the out-of-order messages buffered, counted as above. A new message
    #: that would go beyond it is dropped unacknowledged, like one beyond the window
    #: (the sender retransmits it), unless it is the next expected one, which is
    #: delivered at once. 96 KiB holds a whole send window (64) of the largest
    #: messages (1,139 bytes sealed): a conformant sender never meets it, while 256
    #: messages of 1,000 bytes held 256 KB per session.
    receive_buffer_bytes: int = 96 * 1024
    #: Selective-ack ranges carried in one ACK frame.
    max_sack_ranges: int = 4
    #: Handshake initiations accepted per source address (WireGuard's numbers).
    handshake_rate_per_s: float = 20.0
    handshake_burst: int = 5
    #: New messages accepted per session; excess is not acknowledged (backpressure).
    message_rate_per_s: float = 100.0
    message_burst: int = 200
    #: Recently seen initiator ephemerals remembered to drop replayed message 1s
    #: (when full, the oldest is forgotten: a replay that slips through only makes a
    #: half-open session nobody can use).
    handshake_cache_max: int = 4096
    #: Half-open responder sessions at once; when full, the oldest is dropped.
    max_pending_sessions: int = 1024
    #: Source addresses whose handshake rate is tracked.
    rate_limiter_max_addresses: int = 4096
    #: Message 1s without a valid cookie handshaken per second, all sources together
    #: (PROTOCOL.md 4.5): one core of the reference daemon answers about 2,300, so 500
    #: leave room for the chat. Beyond it the responder is under load for
    #: under_load_hold_s after the budget last ran dry, and asks for cookies.
    handshake_budget_per_s: float = 100.0
    handshake_budget_burst: int = 100
    under_load_hold_s: float = 1.0
    #: The secret of address cookies is replaced this often; a cookie is accepted under
    #: the current and the previous secret, so for 60 to 120 s.
    cookie_secret_s: float = 60.0
