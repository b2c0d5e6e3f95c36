"""Events the protocol core hands to the application (small immutable records)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

Address = Any  # whatever the transport uses, e.g. ("127.0.0.1", 12345)
EndReason: TypeAlias = Literal["timeout", "closed", "local-close", "stalled", "internal-error"]
UndeliveredReason: TypeAlias = Literal["give-up", "session-ended"]


@dataclass(frozen=True)
class SessionStarted:
    """A handshake completed; the session can carry messages."""

    session_id: bytes
    addr: Address


@dataclass(frozen=True)
class MessageReceived:
    """An application message, delivered exactly once and in the sender's order.

    sealed: it came in an ENVELOPE (extension "room-keys"): the payload is a room
    message sealed with a room key, for the application to open."""

    session_id: bytes
    payload: bytes
    sealed: bool = False


@dataclass(frozen=True)
class MessageDelivered:
    """The peer acknowledged message `message_id` (as returned by send())."""

    session_id: bytes
    message_id: int


@dataclass(frozen=True)
class MessageNotDelivered:
    """Message `message_id` was not acknowledged and never will be.

    reason: "give-up" (unacknowledged for give_up_s) or "session-ended" (the session
    ended first; the peer may or may not have received it only if it crashed).
    """

    session_id: bytes
    message_id: int
    payload: bytes
    reason: UndeliveredReason


@dataclass(frozen=True)
class SessionRoamed:
    """Authentic, fresh data came from a new address; replies go there now."""

    session_id: bytes
    old_addr: Address
    new_addr: Address


@dataclass(frozen=True)
class SessionRekeyed:
    """A new key epoch is in use; the old keys are forgotten after key_grace_s."""

    session_id: bytes
    epoch: int


@dataclass(frozen=True)
class HandshakeRefused:
    """An authentic handshake was refused because the server is full (max_sessions
    established sessions): nothing was answered. For the operator's log."""

    addr: Address
    reason: Literal["server-full"] = "server-full"


@dataclass(frozen=True)
class ClockSkew:
    """Client: the server's clock differs from this machine's by about `seconds`
    (positive: the server is ahead), measured from a message 2 (PROTOCOL.md 4.11).
    The client stamps its handshakes in the server's time from now on, so it keeps
    working; the user should still set the clock right."""

    session_id: bytes
    seconds: float


@dataclass(frozen=True)
class SessionEnded:
    """The session is gone.

    reason: "timeout" (peer silent for session_expiry_s), "closed" (peer said so),
    "local-close" (we closed it), "stalled" (a message hit give_up_s),
    "internal-error" (a bug in this session's handling: it was ended so that it
    cannot take the others down).
    """

    session_id: bytes
    reason: EndReason


Event = (
    SessionStarted
    | MessageReceived
    | MessageDelivered
    | MessageNotDelivered
    | SessionRoamed
    | SessionRekeyed
    | HandshakeRefused
    | ClockSkew
    | SessionEnded
)
