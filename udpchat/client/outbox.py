"""The lines on their way to the server, from typed to acknowledged, in typing order.

Lines wait here while there is no session, are handed to the protocol core a window at
a time, and come back (in their original place) when their session ended before the
server acknowledged them. Sans-IO bookkeeping for ChatClient.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

from udpchat.chat import messages

#: Lines kept while not connected; more is refused (an error for the user).
OUTBOX_MAX_LINES = 1000
#: Lines handed to the core at once; the rest wait here (the core has its own window;
#: this bounds how much is re-queued when a session dies).
IN_FLIGHT_MAX_LINES = 128


@dataclass(order=True)
class Line:
    """One message for the server, with what the user typed (for error reports)."""

    seq: int  # typing order: the only thing lines are ordered by
    msg: messages.ClientMessage = field(compare=False)
    typed: str | None = field(compare=False)  # None: hello/bye, not the user's
    queued_at: float = field(compare=False, default=0.0)


class Outbox:
    """Waiting lines (sorted by ``seq``) and lines in flight (by message id)."""

    def __init__(self) -> None:
        self._seq = itertools.count()
        self.waiting: list[Line] = []
        self.in_flight: dict[int, Line] = {}

    def add(self, msg: messages.ClientMessage, typed: str | None, now: float) -> Line:
        line = Line(next(self._seq), msg, typed, now)
        self.waiting.append(line)
        return line

    @property
    def full(self) -> bool:
        return not self.has_room_for(1)

    def has_room_for(self, lines: int) -> bool:
        """Whether ``lines`` more lines may wait (a split line goes in whole or not)."""
        return len(self.waiting) + lines <= OUTBOX_MAX_LINES

    @property
    def empty(self) -> bool:
        return not self.waiting and not self.in_flight

    def has_room_for_input(self) -> bool:
        """Far below the cap: where a pipe stops reading (backpressure)."""
        return len(self.waiting) < OUTBOX_MAX_LINES // 2

    def next_to_send(self) -> Line | None:
        """The oldest waiting line, if the in-flight window has room for it."""
        if self.waiting and len(self.in_flight) < IN_FLIGHT_MAX_LINES:
            return self.waiting[0]
        return None

    def sent(self, line: Line, message_id: int) -> None:
        """``line`` (the one next_to_send returned) was handed to the core."""
        if self.waiting and self.waiting[0] is line:
            self.waiting.pop(0)
        self.in_flight[message_id] = line

    def dropped(self, line: Line) -> None:
        """``line`` (from next_to_send) could not be sent at all: forget it."""
        self.waiting.remove(line)

    def settled(self, message_id: int) -> Line | None:
        """The line with ``message_id`` was acknowledged, or will never be."""
        return self.in_flight.pop(message_id, None)

    def requeue(self, line: Line) -> None:
        """Send ``line`` again, before everything typed after it."""
        bisect.insort(self.waiting, line)

    def take_all(self) -> list[Line]:
        """Every unacknowledged line, in typing order; the outbox is emptied."""
        lines = sorted(self.in_flight.values()) + self.waiting
        self.in_flight.clear()
        self.waiting = []
        return lines

    def typed(self) -> Iterator[Line]:
        """The user's lines not yet acknowledged (not hello/bye)."""
        for line in itertools.chain(self.waiting, self.in_flight.values()):
            if line.typed is not None:
                yield line
