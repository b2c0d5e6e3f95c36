"""Counters of datagrams the core rejected, by reason, for the daemon to log."""

from __future__ import annotations

from collections import Counter


class DropStats:
    """Counts dropped datagrams by reason; cheap enough for the per-datagram path."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def drop(self, reason: str) -> None:
        self._counts[reason] += 1

    def __getitem__(self, reason: str) -> int:
        return self._counts[reason]

    def total(self) -> int:
        return sum(self._counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self._counts)

    def take(self) -> dict[str, int]:
        """Return the counts since the last take() and start again from zero."""
        counts = dict(self._counts)
        self._counts.clear()
        return counts
