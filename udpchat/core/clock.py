"""Two clocks: monotonic time for every timer, wall-clock time for what peers read.

The core's ``now`` (the argument of every endpoint method) is monotonic time: it
drives retransmissions, keepalives, expiry, rate limits and caches, which must not
jump when an operator or NTP steps the system clock. Two things need Unix time
instead, because another machine reads them: the Fernet timestamps of handshake
messages, which the peer checks for freshness (PROTOCOL.md 2.7), and the time a
line was said, shown to members who join later. `WallClock` maps ``now`` to Unix time
as ``now + offset + correction``:

* ``offset`` is the I/O adapter's: it calls ``set(time.time(), now)`` before it hands
  the core anything, so a step of the system clock moves only this;
* ``correction`` is the client's: the difference it measured between the server's
  clock and its own (PROTOCOL.md 4.11). It stamps message 1s in the server's time.
"""

from __future__ import annotations

__all__ = ["WallClock"]


class WallClock:
    """Unix time for a monotonic ``now`` (see the module docstring)."""

    __slots__ = ("offset", "correction")

    def __init__(self) -> None:
        # Until an adapter says otherwise, `now` is taken to be Unix time itself:
        # tests that pass Unix times as `now` need nothing else.
        self.offset = 0.0
        self.correction = 0.0

    def set(self, wall: float, now: float) -> float:
        """The system clock reads `wall` at monotonic `now`. Returns how far it was
        stepped since the last call (negative: backwards)."""
        offset = wall - now
        step, self.offset = offset - self.offset, offset
        return step

    def at(self, now: float) -> float:
        """The Unix time of monotonic `now`, corrected to the peer's clock."""
        return now + self.offset + self.correction

    def local(self, now: float) -> float:
        """The Unix time of monotonic `now` by this machine's own clock."""
        return now + self.offset
