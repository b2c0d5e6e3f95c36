"""Wake-up moderation for the client's socket, as network cards moderate interrupts.

A member of a busy room receives one datagram per line, and on a small shared
machine every wake-up costs more than the line it brings: on the 2-core VM of
docs/PERFORMANCE.md, a client receiving 100 lines/s spent 465-580 µs of CPU per line
when woken once per line, against 120 µs for the line's own work
(benchmarks/client_line.py). So while datagrams keep waking the client closer than
`interval_s` (MODERATION_S, 30 ms) apart, its socket is not looked at again until
30 ms after the last wake-up, and then everything that came meanwhile is read in
one go: about 3 lines per wake-up at 100 lines/s, 275-380 µs per line. A line waits
at most 30 ms more before it is shown (the eye does not see it); after a quiet spell
the next line wakes the client at once, so a chat at human pace loses nothing. Only
the socket is held back: what is typed, and the client's timers, are handled as
soon as they are due.
"""

from __future__ import annotations

#: While datagrams wake the client closer than this apart, it reads at most this often.
MODERATION_S = 0.03


class WakeModeration:
    """When to look for datagrams: at once after a quiet spell; while they keep
    coming closer than `interval_s` apart, no sooner than `interval_s` after the
    last look, for as long as each look finds some. Pure: the port says when a look
    found datagrams or found none, and asks how long to hold off."""

    def __init__(self, interval_s: float = MODERATION_S) -> None:
        self.interval_s = interval_s
        self._looked_at = -1e9  # the last look that found datagrams
        self._busy = False

    def found(self, now: float, held: bool = False) -> None:
        """A look at ``now`` found datagrams; ``held``: the look that ended a hold
        (they came while held off: the stream goes on)."""
        self._busy = held or now - self._looked_at < self.interval_s
        self._looked_at = now

    def found_none(self) -> None:
        """The look that ended a hold found nothing: the stream is over."""
        self._busy = False

    def hold(self, now: float) -> float:
        """How long to leave the socket alone from ``now`` (0: keep reading)."""
        if not self._busy:
            return 0.0
        return max(0.0, self._looked_at + self.interval_s - now)
