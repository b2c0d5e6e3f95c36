"""Counters of datagrams the core rejected, by reason, for the daemon to log; and of
messages it sent again, for the daemon's metrics."""

from __future__ import annotations

from collections import Counter
from typing import Literal, TypeAlias

#: Every reason the core counts a dropped datagram under; the daemon's log line shows
#: them as written here. mypy checks each `DropStats.drop(...)` and
#: `HandshakeRejected(...)` against this list.
DropReason: TypeAlias = Literal[
    # cheap checks before any crypto (endpoint)
    "too-large",
    "short",
    "bad-length",
    "unknown-type",
    "unknown-session",
    "server-full",
    "session-exists",
    # handshakes (handshake, endpoint, session)
    "bad-token",
    "bad-point",
    "bad-handshake",
    "stale-handshake",
    "future-handshake",
    "unbound-response",
    "unexpected-response",
    "replayed-handshake",
    "rate-limited",
    # not dropped silently: a message 1 without a valid cookie while the server is
    # under handshake load, answered with a cookie reply (PROTOCOL.md 4.7)
    "cookie-required",
    "stale-rekey",
    "bad-resume",
    "pending-evicted",
    # data datagrams of a session (session)
    "unknown-epoch",
    "retired-key",
    "key-expired",
    "header-mismatch",
    "bad-mac",
    "bad-frame",
    "replay",
    "message-rate",
    "beyond-window",
    "receive-paused",
    "receive-buffer-full",
    "blind-ack",
    # not a received datagram: one the session did not send, to an address that has
    # not proved it reaches the peer, beyond 3x the bytes that came from it
    "unvalidated-path",
    # not a dropped datagram: a bounded table forgot an entry early, a sign of a
    # flood (core/ratelimit.py); counted here so that the operator sees it
    "rate-limiter-evicted",
    "handshake-cache-evicted",
]

#: The reasons above that count evictions, not datagrams.
EVICTIONS: frozenset[str] = frozenset({"rate-limiter-evicted", "handshake-cache-evicted"})
#: The reasons above that count datagrams withheld, not received ones.
WITHHELD: frozenset[str] = frozenset({"unvalidated-path"})
#: The reasons above that count message 1s answered with a cookie reply.
COOKIE_REPLIES: frozenset[str] = frozenset({"cookie-required"})


class DropStats:
    """Counts dropped datagrams by reason; cheap enough for the per-datagram path."""

    def __init__(self) -> None:
        self._counts: Counter[DropReason] = Counter()
        #: Messages transmitted again (a retransmission is not a drop, but every
        #: session holds this object already): cumulative, never taken.
        self.retransmissions = 0

    def drop(self, reason: DropReason) -> None:
        self._counts[reason] += 1

    def __getitem__(self, reason: DropReason) -> int:
        return self._counts[reason]

    def take(self) -> dict[str, int]:
        """Return the counts since the last take() and start again from zero."""
        counts: dict[str, int] = {reason: n for reason, n in self._counts.items()}
        self._counts.clear()
        return counts
