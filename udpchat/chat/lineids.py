"""Line ids: the random name a sender gives each chat line (say, me, msg), so that a
line sent again after a reconnect is recognised, by the server and by the receivers,
and shown once. Sans-IO, apart from the operating system's random generator.
"""

from __future__ import annotations

import re
import secrets
from collections import deque

#: The form of a line id, and of a client id (same form, never the same value):
#: 16 lowercase hex digits. Match with ``fullmatch``.
HEX_ID_RE = re.compile(r"[0-9a-f]{16}")


def new_line_id() -> str:
    """A fresh line id: 64 random bits as 16 lowercase hex digits.

    From the secure generator, and never derived from anything else (such as the
    client id): other members see line ids, and one who could guess the next id of
    someone's line could send it first and so have that line dropped as a repeat."""
    return secrets.token_hex(8)


class RecentIds:
    """The ``max_ids`` line ids added last, as a set: adding one more forgets the
    oldest (first in, first out). Bounded memory for "have I seen this line?"."""

    def __init__(self, max_ids: int) -> None:
        if max_ids < 0:
            raise ValueError("max_ids must be >= 0")
        self.max_ids = max_ids
        self._order: deque[str] = deque()
        self._ids: set[str] = set()

    def __contains__(self, line_id: object) -> bool:
        return line_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, line_id: str) -> bool:
        """Remember ``line_id``; True if it is new, False if it is remembered already
        (which does not make it any younger)."""
        if line_id in self._ids:
            return False
        self._ids.add(line_id)
        self._order.append(line_id)
        while len(self._order) > self.max_ids:
            self._ids.discard(self._order.popleft())
        return True
